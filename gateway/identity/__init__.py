"""Identity: token verification, principal→role bindings, secret sources.

Must not import server or policy.
"""
