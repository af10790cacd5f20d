package dev.pgwarden.compat;

import javax.net.ssl.HostnameVerifier;
import javax.net.ssl.SSLSession;
import org.postgresql.ssl.PGjdbcHostnameVerifier;

/**
 * An {@code sslhostnameverifier} that runs pgjdbc's own verifier for a name the certificate does
 * not carry: {@code sslmode=verify-full} must then refuse the connection, as it would for a
 * server reached under the wrong name.
 */
public final class WrongNameVerifier implements HostnameVerifier {
  public WrongNameVerifier() {}

  @Override
  public boolean verify(String hostname, SSLSession session) {
    return PGjdbcHostnameVerifier.INSTANCE.verify("wrong-name.invalid", session);
  }
}
