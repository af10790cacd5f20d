/*
 * Optional C fast path of a session's audit trail (gateway/session/audit.py).
 *
 * AuditedHooks follows every statement to its end so that its event says what happened.
 * In Python that costs one C -> Python -> C round trip per Bind, Execute,
 * CommandComplete and ReadyForQuery: most of the audit's CPU per statement. This module
 * provides:
 *
 * - Pending: the record of a statement in flight (the same fields as the pure-Python
 *   _Pending class), with its members in C so that both sides can use it;
 * - Trail: two header walks, scan_frontend and scan_backend, with exactly the contract of
 *   gateway.wire.scan (the framer calls them instead), that also handle the *common*
 *   cases of the watched messages inline, with the same effect on the session's state as
 *   AuditedHooks' Python methods:
 *     Bind of a known statement, Execute of a bound portal (frontend);
 *     CommandComplete of a successful statement, ReadyForQuery (backend).
 *   Anything else -- a statement name it does not know, an error, a refusal pending,
 *   parameters to record, strict mode, a tag that needs JSON escaping -- stops the walk
 *   at that message exactly as a watched message does, and the Python hooks handle it
 *   with the same state (the dicts and the deque are AuditedHooks' own objects).
 *
 * The event of a finished statement is formatted here from the pieces AuditedHooks
 * encoded once (session and statement members); tests check that it is byte-identical to
 * the one the Python path writes.
 */
#include "../wire/_walk.h"
#include "../audit/_pending.h"
#include <structmember.h>
#include <string.h>
#include <time.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

static PyObject *str_bytes_out, *str_requests, *str_readies,
    *str_fragment, *str_extended, *empty_str, *empty_tag, *str_popleft, *str_append,
    *str_version, *str_shape_hits, *str_unsafe, *str_simple, *str_hooks_version,
    *str_server_data, *str_bytes;

/* gateway.audit._pending.EventBuffer, or NULL when that extension is not built (then
 * every event goes through the writer's emit). */
static PyTypeObject *EventBuffer_T;

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------------ attributes */

/*
 * Where an attribute of objects of one type lives when it is a plain member (a
 * __slots__ entry of a Python class, a PyMemberDef of a C type): then it is read right
 * there, as member_get would, instead of through the attribute protocol: a type lookup,
 * a descriptor call and a boxed int per access add up to a good part of the trail's cost
 * per statement in a live worker, where the socket work between two messages has evicted
 * all of that from the caches. Anything else (a property, an instance dict,
 * __getattribute__ overridden, a member of another kind) goes through PyObject_GetAttr,
 * as does an unset slot (which raises AttributeError there).
 */
typedef struct {
    PyTypeObject *type; /* strong reference to the type resolved for; NULL: not yet */
    Py_ssize_t offset;  /* of the member in the object; -1: use the attribute protocol */
    int kind;           /* T_OBJECT_EX, T_PYSSIZET or T_LONGLONG */
} Slot;

static void
slot_resolve(Slot *s, PyObject *obj, PyObject *name)
{
    PyTypeObject *type = Py_TYPE(obj);
    PyObject *d;
    PyMemberDef *m;
    Py_INCREF(type);
    Py_XSETREF(s->type, type);
    s->offset = -1;
    if (type->tp_getattro != PyObject_GenericGetAttr)
        return;
    d = _PyType_Lookup(type, name); /* borrowed, no exception */
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type))
        return;
    m = ((PyMemberDescrObject *)d)->d_member;
    if ((m->flags & ~READONLY) != 0 ||
        (m->type != T_OBJECT_EX && m->type != T_PYSSIZET && m->type != T_LONGLONG))
        return;
    s->offset = m->offset;
    s->kind = m->type;
}

static void
slot_clear(Slot *s)
{
    Py_CLEAR(s->type);
    s->offset = -1;
}

/* An int attribute of obj, or -1 with an exception set. */
static long long
get_ll(PyObject *obj, PyObject *name)
{
    long long v;
    PyObject *o = PyObject_GetAttr(obj, name);
    if (o == NULL)
        return -1;
    v = PyLong_AsLongLong(o);
    Py_DECREF(o);
    return v;
}

/* obj.name += 1 (an int attribute); returns the new value, -1 on error. */
static long long
increment(PyObject *obj, PyObject *name)
{
    long long v = get_ll(obj, name);
    PyObject *o;
    if (v == -1 && PyErr_Occurred())
        return -1;
    v += 1;
    o = PyLong_FromLongLong(v);
    if (o == NULL)
        return -1;
    if (PyObject_SetAttr(obj, name, o) < 0) {
        Py_DECREF(o);
        return -1;
    }
    Py_DECREF(o);
    return v;
}

/* obj.name (a new reference), or NULL with an exception set. */
static PyObject *
slot_get(Slot *s, PyObject *obj, PyObject *name)
{
    if (s->type != Py_TYPE(obj))
        slot_resolve(s, obj, name);
    if (s->offset >= 0 && s->kind == T_OBJECT_EX) {
        PyObject *v = *(PyObject **)((char *)obj + s->offset);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, name);
}

/* get_ll(obj, name) through the slot. */
static long long
slot_get_ll(Slot *s, PyObject *obj, PyObject *name)
{
    char *addr;
    if (s->type != Py_TYPE(obj))
        slot_resolve(s, obj, name);
    if (s->offset >= 0) {
        addr = (char *)obj + s->offset;
        if (s->kind == T_PYSSIZET)
            return (long long)*(Py_ssize_t *)addr;
        if (s->kind == T_LONGLONG)
            return *(long long *)addr;
        if (*(PyObject **)addr != NULL)
            return PyLong_AsLongLong(*(PyObject **)addr);
    }
    return get_ll(obj, name);
}

/* ------------------------------------------------------------------ Pending */

typedef struct {
    PyObject_HEAD
    PyObject *statement;
    long long batch, bytes_in, out_mark, start, id;
    PyObject *rows;          /* None or int */
    PyObject *command_tag;   /* bytes: the tag as a JSON string */
    PyObject *sqlstate;      /* str */
    PyObject *error_message; /* str */
    PyObject *parameters;    /* None or list */
} Pending;

static PyTypeObject PendingType;

/* Freed Pendings kept for reuse: a session has one or a few in flight at a time, so
 * nearly every statement's record is made and freed without the allocator. (The GIL
 * guards the list.) */
#define PENDING_FREE_MAX 64
static Pending *pending_free[PENDING_FREE_MAX];
static int pending_nfree;

static Pending *
pending_make(PyObject *statement, long long batch, long long bytes_in, long long out_mark)
{
    Pending *p;
    if (pending_nfree > 0) {
        p = pending_free[--pending_nfree];
        (void)PyObject_Init((PyObject *)p, &PendingType);
    } else {
        p = PyObject_New(Pending, &PendingType);
        if (p == NULL)
            return NULL;
    }
    Py_INCREF(statement);
    p->statement = statement;
    p->batch = batch;
    p->bytes_in = bytes_in;
    p->out_mark = out_mark;
    p->start = now_ns();
    p->id = 0;
    p->rows = Py_NewRef(Py_None);
    p->command_tag = Py_NewRef(empty_tag);
    p->sqlstate = Py_NewRef(empty_str);
    p->error_message = Py_NewRef(empty_str);
    p->parameters = Py_NewRef(Py_None);
    return p;
}

static PyObject *
Pending_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *statement;
    long long batch, bytes_in, out_mark;
    static char *kwlist[] = {"statement", "batch", "bytes_in", "out_mark", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OLLL", kwlist, &statement, &batch,
                                     &bytes_in, &out_mark))
        return NULL;
    return (PyObject *)pending_make(statement, batch, bytes_in, out_mark);
}

static void
Pending_dealloc(Pending *p)
{
    Py_XDECREF(p->statement);
    Py_XDECREF(p->rows);
    Py_XDECREF(p->command_tag);
    Py_XDECREF(p->sqlstate);
    Py_XDECREF(p->error_message);
    Py_XDECREF(p->parameters);
    if (pending_nfree < PENDING_FREE_MAX)
        pending_free[pending_nfree++] = p;
    else
        PyObject_Free(p);
}

static PyMemberDef Pending_members[] = {
    {"statement", T_OBJECT_EX, offsetof(Pending, statement), 0, NULL},
    {"batch", T_LONGLONG, offsetof(Pending, batch), 0, NULL},
    {"bytes_in", T_LONGLONG, offsetof(Pending, bytes_in), 0, NULL},
    {"out_mark", T_LONGLONG, offsetof(Pending, out_mark), 0, NULL},
    {"start", T_LONGLONG, offsetof(Pending, start), 0, NULL},
    {"id", T_LONGLONG, offsetof(Pending, id), 0, NULL},
    {"rows", T_OBJECT_EX, offsetof(Pending, rows), 0, NULL},
    {"command_tag", T_OBJECT_EX, offsetof(Pending, command_tag), 0, NULL},
    {"sqlstate", T_OBJECT_EX, offsetof(Pending, sqlstate), 0, NULL},
    {"error_message", T_OBJECT_EX, offsetof(Pending, error_message), 0, NULL},
    {"parameters", T_OBJECT_EX, offsetof(Pending, parameters), 0, NULL},
    {NULL},
};

static PyTypeObject PendingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.session._trail.Pending",
    .tp_basicsize = sizeof(Pending),
    .tp_dealloc = (destructor)Pending_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A statement sent upstream whose outcome is not known yet.",
    .tp_members = Pending_members,
    .tp_new = Pending_new,
};

/* ------------------------------------------------------------------ Statement */

/* The members of a simple query's statement event that come before its suffix. */
#define SIMPLE_PREFIX "\"protocol\":\"simple\",\"text\":\""

/* A simple Query's statement as the audit trail keeps it: the attributes of
 * gateway.session.audit._Prepared, for queries decided here. The event fragment and the
 * text are made only if Python asks for them: finish() writes the fragment straight
 * from the query's bytes into the event, so a statement recorded here costs no copy of
 * its text besides that one. */
typedef struct {
    PyObject_HEAD
    PyObject *raw;         /* bytes: the query text (ASCII: the shape alphabet) */
    PyObject *suffix;      /* bytes: the event members after the text */
    Py_ssize_t escapes;    /* tabs, CRs and LFs in raw (each escaped in two bytes) */
    PyObject *fragment;    /* bytes, or NULL until asked for */
    PyObject *text;        /* str, or NULL until asked for */
    PyObject *fingerprint; /* str */
    PyObject *decision;    /* Decision */
    PyObject *protocol;    /* str */
    PyObject *extended;    /* bool */
} Statement;

/* The size of a Statement's fragment. */
static Py_ssize_t
statement_fragment_size(Statement *st)
{
    return (Py_ssize_t)sizeof(SIMPLE_PREFIX) - 1 + PyBytes_GET_SIZE(st->raw) + st->escapes +
           1 + PyBytes_GET_SIZE(st->suffix);
}

/* Write a Statement's fragment at w (statement_fragment_size bytes); returns the end. */
static char *
statement_fragment_write(Statement *st, char *w)
{
    const char *body = PyBytes_AS_STRING(st->raw);
    Py_ssize_t i, len = PyBytes_GET_SIZE(st->raw);
    memcpy(w, SIMPLE_PREFIX, sizeof(SIMPLE_PREFIX) - 1);
    w += sizeof(SIMPLE_PREFIX) - 1;
    if (st->escapes == 0) {
        memcpy(w, body, len);
        w += len;
    } else {
        for (i = 0; i < len; i++) {
            char c = body[i];
            if (c == '\t') {
                *w++ = '\\';
                *w++ = 't';
            } else if (c == '\r') {
                *w++ = '\\';
                *w++ = 'r';
            } else if (c == '\n') {
                *w++ = '\\';
                *w++ = 'n';
            } else {
                *w++ = c;
            }
        }
    }
    *w++ = '"';
    memcpy(w, PyBytes_AS_STRING(st->suffix), PyBytes_GET_SIZE(st->suffix));
    return w + PyBytes_GET_SIZE(st->suffix);
}

static void
Statement_dealloc(Statement *st)
{
    Py_XDECREF(st->raw);
    Py_XDECREF(st->suffix);
    Py_XDECREF(st->fragment);
    Py_XDECREF(st->text);
    Py_XDECREF(st->fingerprint);
    Py_XDECREF(st->decision);
    Py_XDECREF(st->protocol);
    Py_XDECREF(st->extended);
    PyObject_Free(st);
}

static PyObject *
Statement_get_fragment(Statement *st, void *Py_UNUSED(closure))
{
    if (st->fragment == NULL) {
        PyObject *f = PyBytes_FromStringAndSize(NULL, statement_fragment_size(st));
        if (f == NULL)
            return NULL;
        statement_fragment_write(st, PyBytes_AS_STRING(f));
        st->fragment = f;
    }
    return Py_NewRef(st->fragment);
}

static PyObject *
Statement_get_text(Statement *st, void *Py_UNUSED(closure))
{
    if (st->text == NULL) {
        st->text = PyUnicode_DecodeASCII(PyBytes_AS_STRING(st->raw),
                                         PyBytes_GET_SIZE(st->raw), NULL);
        if (st->text == NULL)
            return NULL;
    }
    return Py_NewRef(st->text);
}

static PyGetSetDef Statement_getset[] = {
    {"fragment", (getter)Statement_get_fragment, NULL,
     "The statement's members of its event (JSON, without braces).", NULL},
    {"text", (getter)Statement_get_text, NULL, "The query text.", NULL},
    {NULL},
};

static PyMemberDef Statement_members[] = {
    {"fingerprint", T_OBJECT_EX, offsetof(Statement, fingerprint), READONLY, NULL},
    {"decision", T_OBJECT_EX, offsetof(Statement, decision), READONLY, NULL},
    {"protocol", T_OBJECT_EX, offsetof(Statement, protocol), READONLY, NULL},
    {"extended", T_OBJECT_EX, offsetof(Statement, extended), READONLY, NULL},
    {NULL},
};

static PyTypeObject StatementType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.session._trail.Statement",
    .tp_basicsize = sizeof(Statement),
    .tp_dealloc = (destructor)Statement_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A simple query decided by the C fast path (see _Prepared).",
    .tp_members = Statement_members,
    .tp_getset = Statement_getset,
};

/* ------------------------------------------------------------------ Queue */

/* AuditedHooks' statements in flight (what it keeps in a collections.deque without this
 * module): the part of a deque's interface the hooks use -- append, popleft, len, item
 * access -- as a ring of references that the walks below use without method calls. */
typedef struct {
    PyObject_HEAD
    PyObject **items;
    Py_ssize_t cap, head, count;
} Queue;

static PyTypeObject QueueType;

static int
queue_push(Queue *q, PyObject *o)
{
    if (q->count == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 8, i;
        PyObject **items = PyMem_New(PyObject *, cap);
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (i = 0; i < q->count; i++)
            items[i] = q->items[(q->head + i) % q->cap];
        PyMem_Free(q->items);
        q->items = items;
        q->cap = cap;
        q->head = 0;
    }
    q->items[(q->head + q->count) % q->cap] = Py_NewRef(o);
    q->count++;
    return 0;
}

/* The first item (a new reference), removed; NULL with IndexError if empty. */
static PyObject *
queue_pop(Queue *q)
{
    PyObject *o;
    if (q->count == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty queue");
        return NULL;
    }
    o = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->count--;
    return o;
}

static PyObject *
Queue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!_PyArg_NoPositional("Queue", args) || !_PyArg_NoKeywords("Queue", kwds))
        return NULL;
    return type->tp_alloc(type, 0);
}

static int
Queue_traverse(Queue *q, visitproc visit, void *arg)
{
    Py_ssize_t i;
    for (i = 0; i < q->count; i++)
        Py_VISIT(q->items[(q->head + i) % q->cap]);
    return 0;
}

static int
Queue_clear(Queue *q)
{
    while (q->count > 0) {
        PyObject *o = queue_pop(q);
        Py_DECREF(o);
    }
    return 0;
}

static void
Queue_dealloc(Queue *q)
{
    PyObject_GC_UnTrack(q);
    Queue_clear(q);
    PyMem_Free(q->items);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

static Py_ssize_t
Queue_length(Queue *q)
{
    return q->count;
}

static PyObject *
Queue_item(Queue *q, Py_ssize_t i)
{
    if (i < 0 || i >= q->count) {
        PyErr_SetString(PyExc_IndexError, "queue index out of range");
        return NULL;
    }
    return Py_NewRef(q->items[(q->head + i) % q->cap]);
}

static PyObject *
Queue_append(Queue *q, PyObject *o)
{
    if (queue_push(q, o) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Queue_popleft(Queue *q, PyObject *Py_UNUSED(ignored))
{
    return queue_pop(q);
}

static PySequenceMethods Queue_as_sequence = {
    .sq_length = (lenfunc)Queue_length,
    .sq_item = (ssizeargfunc)Queue_item,
};

static PyMethodDef Queue_methods[] = {
    {"append", (PyCFunction)Queue_append, METH_O, "Add an item at the end."},
    {"popleft", (PyCFunction)Queue_popleft, METH_NOARGS,
     "Remove and return the first item (IndexError if empty)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject QueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.session._trail.Queue",
    .tp_basicsize = sizeof(Queue),
    .tp_dealloc = (destructor)Queue_dealloc,
    .tp_as_sequence = &Queue_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A first-in first-out queue: append, popleft, len() and q[i].",
    .tp_traverse = (traverseproc)Queue_traverse,
    .tp_clear = (inquiry)Queue_clear,
    .tp_methods = Queue_methods,
    .tp_new = Queue_new,
};

/* ------------------------------------------------------------------ Counters */

/* A session's statement counters (AuditedHooks' _counts): plain integers that the walks
 * increment in place, where attributes holding int objects would cost an allocation and
 * a free per increment. */
typedef struct {
    PyObject_HEAD
    long long seq;        /* the last id given to a statement */
    long long statements; /* statement events written */
} Counters;

static PyMemberDef Counters_members[] = {
    {"seq", T_LONGLONG, offsetof(Counters, seq), 0, "The last id given to a statement."},
    {"statements", T_LONGLONG, offsetof(Counters, statements), 0,
     "Statement events written."},
    {NULL},
};

static PyObject *
Counters_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!_PyArg_NoPositional("Counters", args) || !_PyArg_NoKeywords("Counters", kwds))
        return NULL;
    return type->tp_alloc(type, 0);
}

static PyTypeObject CountersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.session._trail.Counters",
    .tp_basicsize = sizeof(Counters),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A session's statement counters: seq and statements.",
    .tp_members = Counters_members,
    .tp_new = Counters_new,
};

/* ------------------------------------------------------------------ Portals */

/*
 * AuditedHooks' bound portals (what it keeps in a dict without this module): portal name
 * (bytes) -> (statement, parameters, Bind size, batch), with the part of a dict's
 * interface the hooks use. The unnamed portal -- the one nearly every driver binds and
 * executes, once per statement -- is kept in plain members rather than in the dict, so
 * that the walks below bind, execute and drop it without allocating a key, a tuple and
 * two ints and without inserting into and deleting from a dict, per statement. Named
 * portals are in a dict.
 */
typedef struct {
    PyObject_HEAD
    PyObject *named;      /* dict: name (not b"") -> 4-tuple */
    PyObject *u_prepared; /* the unnamed portal's statement; NULL: none bound */
    PyObject *u_params;   /* None or list */
    long long u_size, u_batch;
} Portals;

static PyTypeObject PortalsType;

static int
is_unnamed(PyObject *key)
{
    return PyBytes_Check(key) && PyBytes_GET_SIZE(key) == 0;
}

static void
portals_drop_unnamed(Portals *ps)
{
    Py_CLEAR(ps->u_prepared);
    Py_CLEAR(ps->u_params);
}

/* The unnamed portal's entry as the dict would hold it (a new reference). */
static PyObject *
portals_unnamed_tuple(Portals *ps)
{
    return Py_BuildValue("(OOLL)", ps->u_prepared, ps->u_params, ps->u_size, ps->u_batch);
}

static PyObject *
Portals_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Portals *ps;
    if (!_PyArg_NoPositional("Portals", args) || !_PyArg_NoKeywords("Portals", kwds))
        return NULL;
    ps = (Portals *)type->tp_alloc(type, 0);
    if (ps == NULL)
        return NULL;
    ps->named = PyDict_New();
    if (ps->named == NULL) {
        Py_DECREF(ps);
        return NULL;
    }
    return (PyObject *)ps;
}

static int
Portals_traverse(Portals *ps, visitproc visit, void *arg)
{
    Py_VISIT(ps->named);
    Py_VISIT(ps->u_prepared);
    Py_VISIT(ps->u_params);
    return 0;
}

static int
Portals_clear_refs(Portals *ps)
{
    Py_CLEAR(ps->named);
    portals_drop_unnamed(ps);
    return 0;
}

static void
Portals_dealloc(Portals *ps)
{
    PyObject_GC_UnTrack(ps);
    Portals_clear_refs(ps);
    Py_TYPE(ps)->tp_free((PyObject *)ps);
}

static Py_ssize_t
Portals_length(Portals *ps)
{
    return PyDict_GET_SIZE(ps->named) + (ps->u_prepared != NULL);
}

/* portals[key] (a new reference); NULL with KeyError if absent (or another error). */
static PyObject *
Portals_subscript(Portals *ps, PyObject *key)
{
    PyObject *v;
    if (is_unnamed(key)) {
        if (ps->u_prepared != NULL)
            return portals_unnamed_tuple(ps);
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    v = PyDict_GetItemWithError(ps->named, key);
    if (v == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return Py_NewRef(v);
}

static int
Portals_ass_subscript(Portals *ps, PyObject *key, PyObject *value)
{
    long long size, batch;
    if (!is_unnamed(key))
        return value == NULL ? PyDict_DelItem(ps->named, key)
                             : PyDict_SetItem(ps->named, key, value);
    if (value == NULL) {
        if (ps->u_prepared == NULL) {
            PyErr_SetObject(PyExc_KeyError, key);
            return -1;
        }
        portals_drop_unnamed(ps);
        return 0;
    }
    if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "a portal is (statement, parameters, Bind size, batch)");
        return -1;
    }
    size = PyLong_AsLongLong(PyTuple_GET_ITEM(value, 2));
    if (size == -1 && PyErr_Occurred())
        return -1;
    batch = PyLong_AsLongLong(PyTuple_GET_ITEM(value, 3));
    if (batch == -1 && PyErr_Occurred())
        return -1;
    Py_XSETREF(ps->u_prepared, Py_NewRef(PyTuple_GET_ITEM(value, 0)));
    Py_XSETREF(ps->u_params, Py_NewRef(PyTuple_GET_ITEM(value, 1)));
    ps->u_size = size;
    ps->u_batch = batch;
    return 0;
}

static int
Portals_contains(Portals *ps, PyObject *key)
{
    if (is_unnamed(key))
        return ps->u_prepared != NULL;
    return PyDict_Contains(ps->named, key);
}

static PyObject *
Portals_get(Portals *ps, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *v, *dflt = nargs > 1 ? args[1] : Py_None;
    if (!_PyArg_CheckPositional("get", nargs, 1, 2))
        return NULL;
    if (is_unnamed(args[0]))
        return ps->u_prepared != NULL ? portals_unnamed_tuple(ps) : Py_NewRef(dflt);
    v = PyDict_GetItemWithError(ps->named, args[0]);
    if (v == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(dflt);
    return Py_NewRef(v);
}

static PyObject *
Portals_pop(Portals *ps, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *v;
    if (!_PyArg_CheckPositional("pop", nargs, 1, 2))
        return NULL;
    if (is_unnamed(args[0])) {
        if (ps->u_prepared == NULL) {
            if (nargs > 1)
                return Py_NewRef(args[1]);
            PyErr_SetObject(PyExc_KeyError, args[0]);
            return NULL;
        }
        v = portals_unnamed_tuple(ps);
        if (v != NULL)
            portals_drop_unnamed(ps);
        return v;
    }
    return _PyDict_Pop(ps->named, args[0], nargs > 1 ? args[1] : NULL);
}

static PyObject *
Portals_clear(Portals *ps, PyObject *Py_UNUSED(ignored))
{
    PyDict_Clear(ps->named);
    portals_drop_unnamed(ps);
    Py_RETURN_NONE;
}

/* A list of (name, entry) pairs, the unnamed portal first: a snapshot (unlike a dict's
 * view), so entries can be deleted while it is walked. */
static PyObject *
Portals_items(Portals *ps, PyObject *Py_UNUSED(ignored))
{
    PyObject *items = PyDict_Items(ps->named), *pair;
    if (items == NULL || ps->u_prepared == NULL)
        return items;
    pair = Py_BuildValue("(yN)", "", portals_unnamed_tuple(ps));
    if (pair == NULL || PyList_Insert(items, 0, pair) < 0) {
        Py_XDECREF(pair);
        Py_DECREF(items);
        return NULL;
    }
    Py_DECREF(pair);
    return items;
}

/* A list of the entries, the unnamed portal's first. */
static PyObject *
Portals_values(Portals *ps, PyObject *Py_UNUSED(ignored))
{
    PyObject *values = PyDict_Values(ps->named), *entry;
    if (values == NULL || ps->u_prepared == NULL)
        return values;
    entry = portals_unnamed_tuple(ps);
    if (entry == NULL || PyList_Insert(values, 0, entry) < 0) {
        Py_XDECREF(entry);
        Py_DECREF(values);
        return NULL;
    }
    Py_DECREF(entry);
    return values;
}

/*
 * Drop the portals bound in a batch up to `ended` (their transaction is over: see
 * AuditedHooks.on_ready) from a dict of portal entries. 0, or -1 on error.
 */
static int
drop_ended(PyObject *dict, long long ended)
{
    PyObject *key, *value, *doomed;
    Py_ssize_t pos = 0, i;
    if (PyDict_GET_SIZE(dict) == 0)
        return 0;
    doomed = PyList_New(0);
    if (doomed == NULL)
        return -1;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        long long b;
        if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 4) {
            Py_DECREF(doomed);
            PyErr_SetString(PyExc_TypeError, "malformed portal entry");
            return -1;
        }
        b = PyLong_AsLongLong(PyTuple_GET_ITEM(value, 3));
        if (b == -1 && PyErr_Occurred()) {
            Py_DECREF(doomed);
            return -1;
        }
        if (b <= ended && PyList_Append(doomed, key) < 0) {
            Py_DECREF(doomed);
            return -1;
        }
    }
    for (i = 0; i < PyList_GET_SIZE(doomed); i++) {
        if (PyDict_DelItem(dict, PyList_GET_ITEM(doomed, i)) < 0) {
            Py_DECREF(doomed);
            return -1;
        }
    }
    Py_DECREF(doomed);
    return 0;
}

static PyObject *
Portals_end_batches(Portals *ps, PyObject *arg)
{
    long long ended = PyLong_AsLongLong(arg);
    if (ended == -1 && PyErr_Occurred())
        return NULL;
    if (ps->u_prepared != NULL && ps->u_batch <= ended)
        portals_drop_unnamed(ps);
    if (drop_ended(ps->named, ended) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMappingMethods Portals_as_mapping = {
    .mp_length = (lenfunc)Portals_length,
    .mp_subscript = (binaryfunc)Portals_subscript,
    .mp_ass_subscript = (objobjargproc)Portals_ass_subscript,
};

static PySequenceMethods Portals_as_sequence = {
    .sq_contains = (objobjproc)Portals_contains,
};

static PyMethodDef Portals_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Portals_get, METH_FASTCALL,
     "get(name, default=None): the portal's entry, or default."},
    {"pop", (PyCFunction)(void (*)(void))Portals_pop, METH_FASTCALL,
     "pop(name[, default]): remove and return the portal's entry."},
    {"clear", (PyCFunction)Portals_clear, METH_NOARGS, "Drop every portal."},
    {"items", (PyCFunction)Portals_items, METH_NOARGS,
     "A list of (name, entry) pairs (a snapshot)."},
    {"values", (PyCFunction)Portals_values, METH_NOARGS, "A list of the entries."},
    {"end_batches", (PyCFunction)Portals_end_batches, METH_O,
     "Drop the portals bound in a batch up to the given one (their transaction ended)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PortalsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.session._trail.Portals",
    .tp_basicsize = sizeof(Portals),
    .tp_dealloc = (destructor)Portals_dealloc,
    .tp_as_mapping = &Portals_as_mapping,
    .tp_as_sequence = &Portals_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Bound portals: name -> (statement, parameters, Bind size, batch).",
    .tp_traverse = (traverseproc)Portals_traverse,
    .tp_clear = (inquiry)Portals_clear_refs,
    .tp_methods = Portals_methods,
    .tp_new = Portals_new,
};

/* ------------------------------------------------------------------ Trail */

typedef struct {
    PyObject_HEAD
    PyObject *hooks;      /* AuditedHooks or PolicyHooks */
    PyObject *relay;      /* bytes_out */
    PyObject *frontend;   /* Framer: requests */
    PyObject *backend;    /* Framer: readies */
    PyObject *statements; /* dict: statement name -> _Prepared */
    PyObject *portals;    /* Portals (or a dict): portal -> (prepared, parameters, Bind
                           * size, batch) */
    Portals *ps;          /* portals when it is a Portals (borrowed), else NULL */
    Counters *counts;     /* the hooks' counters (an audit trail's; else NULL) */
    PyObject *pending;    /* Queue (or a collections.deque) of Pending */
    PyObject *refused;    /* the relay's refused statement names (dict) */
    PyObject *emit;       /* callable taking one encoded event (bytes) */
    PyObject *gate;       /* the AuditWriter, or None */
    PyObject *sink;       /* its pending EventBuffer (C), or NULL */
    PyObject *fast_flag;  /* its fast_ok as a bytearray of one byte, or NULL */
    PyObject *kick;       /* its fast_kick, or NULL */
    Py_ssize_t flush_events;
    PyObject *session;    /* bytes: the session's members of a statement event */
    PyObject *id_prefix;  /* bytes: '"<session_id>:' */
    PyObject *popleft, *append;
    PyObject *cache;      /* DecisionCache: version, shape_hits */
    PyObject *shapes;     /* dict: shape -> (Decision, fingerprint, event suffix) */
    PyObject *shape_fn;   /* gateway.sql.shape.shape */
    int fast;             /* 0: every watched message goes to Python */
    int audit;            /* 0: a policy-only session (no trail: only Query is handled) */
    /* Members read or written per statement (see Slot). */
    Slot hooks_version, hooks_unsafe;
    Slot fragment, extended; /* of a _Prepared (a Statement's are read directly) */
    Slot requests, readies;  /* of the framers */
    Slot server_data, fwd_bytes; /* relay.server_data.bytes: see relay_bytes_out */
    int direct_bytes_out;    /* 1 checked, -1 not usable, 0 not yet known */
    /* The last statement name bound and the last command tag seen (they repeat): the
     * bytes of the name (its hash cached) and the tag's JSON, reused while the same. */
    PyObject *last_name, *last_tag_json;
    /* What last_name named in the statements dict, and that dict's version then: while
     * the dict is unchanged, the same name binds the same statement without a lookup
     * (a bytes key compared by value each time otherwise). */
    PyObject *last_prepared;
    unsigned long long last_version;
    char last_tag[64];
    Py_ssize_t last_tag_len;
} Trail;

/* The pending queue's length, its item i (a new reference), append and popleft: directly
 * for a Queue, through the deque's methods otherwise. */
static Py_ssize_t
pending_len(Trail *t)
{
    if (Py_IS_TYPE(t->pending, &QueueType))
        return ((Queue *)t->pending)->count;
    return PyObject_Length(t->pending);
}

static PyObject *
pending_item(Trail *t, Py_ssize_t i)
{
    if (Py_IS_TYPE(t->pending, &QueueType))
        return Queue_item((Queue *)t->pending, i);
    return PySequence_GetItem(t->pending, i);
}

static int
pending_append(Trail *t, PyObject *o)
{
    PyObject *res;
    if (Py_IS_TYPE(t->pending, &QueueType))
        return queue_push((Queue *)t->pending, o);
    res = PyObject_CallOneArg(t->append, o);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static PyObject *
pending_popleft(Trail *t)
{
    if (Py_IS_TYPE(t->pending, &QueueType))
        return queue_pop((Queue *)t->pending);
    return PyObject_CallNoArgs(t->popleft);
}

#define TRAIL_SLOTS(t)                                                                     \
    &(t)->hooks_version, &(t)->hooks_unsafe,                                               \
        &(t)->fragment, &(t)->extended, &(t)->requests, &(t)->readies, &(t)->server_data,  \
        &(t)->fwd_bytes

static int
Trail_traverse(Trail *t, visitproc visit, void *arg)
{
    Py_VISIT(t->hooks);
    Py_VISIT(t->relay);
    Py_VISIT(t->frontend);
    Py_VISIT(t->backend);
    Py_VISIT(t->statements);
    Py_VISIT(t->portals);
    Py_VISIT(t->pending);
    Py_VISIT(t->refused);
    Py_VISIT(t->emit);
    Py_VISIT(t->gate);
    Py_VISIT(t->sink);
    Py_VISIT(t->fast_flag);
    Py_VISIT(t->kick);
    Py_VISIT(t->popleft);
    Py_VISIT(t->append);
    Py_VISIT(t->cache);
    Py_VISIT(t->shapes);
    Py_VISIT(t->shape_fn);
    Py_VISIT(t->last_name);
    Py_VISIT(t->last_tag_json);
    Py_VISIT(t->last_prepared);
    Py_VISIT(t->counts);
    return 0;
}

static int
Trail_clear(Trail *t)
{
    Py_CLEAR(t->hooks);
    Py_CLEAR(t->relay);
    Py_CLEAR(t->frontend);
    Py_CLEAR(t->backend);
    Py_CLEAR(t->statements);
    Py_CLEAR(t->portals);
    Py_CLEAR(t->pending);
    Py_CLEAR(t->refused);
    Py_CLEAR(t->emit);
    Py_CLEAR(t->gate);
    Py_CLEAR(t->sink);
    Py_CLEAR(t->fast_flag);
    Py_CLEAR(t->kick);
    Py_CLEAR(t->session);
    Py_CLEAR(t->id_prefix);
    Py_CLEAR(t->popleft);
    Py_CLEAR(t->append);
    Py_CLEAR(t->cache);
    Py_CLEAR(t->shapes);
    Py_CLEAR(t->shape_fn);
    Py_CLEAR(t->last_name);
    Py_CLEAR(t->last_tag_json);
    Py_CLEAR(t->last_prepared);
    Py_CLEAR(t->counts);
    t->ps = NULL;
    {
        Slot *slots[] = {TRAIL_SLOTS(t)};
        size_t i;
        for (i = 0; i < sizeof(slots) / sizeof(slots[0]); i++)
            slot_clear(slots[i]);
    }
    t->fast = 0;
    return 0;
}

static void
Trail_dealloc(Trail *t)
{
    PyObject_GC_UnTrack(t);
    Trail_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *
Trail_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Trail *t;
    PyObject *hooks, *relay, *frontend, *backend, *statements, *portals, *pending, *refused,
        *emit, *gate, *session, *id_prefix, *cache, *shapes, *shape_fn;
    PyObject *counts = Py_None;
    int fast, audit;
    static char *kwlist[] = {"hooks", "relay", "frontend", "backend", "statements",
                             "portals", "pending", "refused", "emit", "gate", "session",
                             "id_prefix", "fast", "audit", "cache", "shapes", "shape",
                             "counts", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO!OOO!OOSSppOO!O|O", kwlist, &hooks,
                                     &relay, &frontend, &backend, &PyDict_Type, &statements,
                                     &portals, &pending, &PyDict_Type,
                                     &refused, &emit, &gate, &session, &id_prefix, &fast,
                                     &audit, &cache, &PyDict_Type, &shapes, &shape_fn,
                                     &counts))
        return NULL;
    if (audit ? !Py_IS_TYPE(counts, &CountersType) : counts != Py_None) {
        PyErr_SetString(PyExc_TypeError,
                        "counts must be a Counters for an audit trail, else None");
        return NULL;
    }
    if (!PyDict_Check(portals) && !Py_IS_TYPE(portals, &PortalsType)) {
        PyErr_SetString(PyExc_TypeError, "portals must be a dict or a Portals");
        return NULL;
    }
    t = (Trail *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->hooks = Py_NewRef(hooks);
    t->relay = Py_NewRef(relay);
    t->frontend = Py_NewRef(frontend);
    t->backend = Py_NewRef(backend);
    t->statements = Py_NewRef(statements);
    t->portals = Py_NewRef(portals);
    t->ps = Py_IS_TYPE(portals, &PortalsType) ? (Portals *)portals : NULL;
    t->counts = counts == Py_None ? NULL : (Counters *)Py_NewRef(counts);
    t->pending = Py_NewRef(pending);
    t->refused = Py_NewRef(refused);
    t->emit = Py_NewRef(emit);
    t->gate = Py_NewRef(gate);
    t->session = Py_NewRef(session);
    t->id_prefix = Py_NewRef(id_prefix);
    t->cache = Py_NewRef(cache);
    t->shapes = Py_NewRef(shapes);
    t->shape_fn = Py_NewRef(shape_fn);
    t->fast = fast;
    t->audit = audit;
    {
        Slot *slots[] = {TRAIL_SLOTS(t)};
        size_t i;
        for (i = 0; i < sizeof(slots) / sizeof(slots[0]); i++)
            slots[i]->offset = -1; /* (type is NULL: resolved at first use) */
    }
    t->popleft = PyObject_GetAttr(pending, str_popleft);
    t->append = PyObject_GetAttr(pending, str_append);
    if (t->popleft == NULL || t->append == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    if (gate != Py_None) {
        /* The writer's pending EventBuffer, flush size and fast_ok byte (AuditWriter.fast_sink). */
        PyObject *pair = PyObject_CallMethod(gate, "fast_sink", NULL);
        if (pair == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 3 ||
            !PyByteArray_Check(PyTuple_GET_ITEM(pair, 2)) ||
            PyByteArray_GET_SIZE(PyTuple_GET_ITEM(pair, 2)) != 1) {
            Py_DECREF(pair);
            Py_DECREF(t);
            PyErr_SetString(PyExc_TypeError,
                            "fast_sink() must return (EventBuffer, int, bytearray of one byte)");
            return NULL;
        }
        /* Only the C EventBuffer is written directly; with its pure-Python twin every
         * event goes through emit. */
        if (EventBuffer_T != NULL && Py_IS_TYPE(PyTuple_GET_ITEM(pair, 0), EventBuffer_T))
            t->sink = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        t->fast_flag = Py_NewRef(PyTuple_GET_ITEM(pair, 2));
        t->flush_events = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
        if (t->flush_events == -1 && PyErr_Occurred()) {
            Py_DECREF(t);
            return NULL;
        }
        t->kick = PyObject_GetAttrString(gate, "fast_kick");
        if (t->kick == NULL) {
            Py_DECREF(t);
            return NULL;
        }
    }
    return (PyObject *)t;
}

/* Whether the writer takes events without its checks (AuditWriter.fast_ok, which the
 * writer keeps in the byte it shared through fast_sink): 1, 0, or -1 on error. Without a
 * writer (a policy-only session): 1. */
static int
gate_open(Trail *t)
{
    if (t->gate == NULL || t->gate == Py_None)
        return 1;
    if (t->fast_flag == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the audit trail was closed");
        return -1;
    }
    return PyByteArray_AS_STRING(t->fast_flag)[0] != 0;
}

/* relay.bytes_out. Relay's property returns relay.server_data.bytes: read that member
 * directly when the relay and its Forward have such members, after checking once that
 * it gives what the property does; otherwise (another RelayState) the property. */
static long long
relay_bytes_out(Trail *t)
{
    PyObject *fwd;
    long long v;
    if (t->direct_bytes_out < 0)
        return get_ll(t->relay, str_bytes_out);
    if (t->server_data.type != Py_TYPE(t->relay))
        slot_resolve(&t->server_data, t->relay, str_server_data);
    if (t->server_data.offset < 0 || t->server_data.kind != T_OBJECT_EX ||
        (fwd = *(PyObject **)((char *)t->relay + t->server_data.offset)) == NULL) {
        t->direct_bytes_out = -1;
        return get_ll(t->relay, str_bytes_out);
    }
    if (t->fwd_bytes.type != Py_TYPE(fwd))
        slot_resolve(&t->fwd_bytes, fwd, str_bytes);
    if (t->fwd_bytes.offset < 0 || t->fwd_bytes.kind == T_OBJECT_EX) {
        t->direct_bytes_out = -1;
        return get_ll(t->relay, str_bytes_out);
    }
    v = slot_get_ll(&t->fwd_bytes, fwd, str_bytes);
    if (t->direct_bytes_out == 0) {
        long long check = get_ll(t->relay, str_bytes_out);
        if (check == -1 && PyErr_Occurred())
            return -1;
        t->direct_bytes_out = check == v ? 1 : -1;
        return check;
    }
    return v;
}

/* Copy a string literal (its length known at compile time). */
#define put(w, lit) (memcpy((w), (lit), sizeof(lit) - 1), (w) + sizeof(lit) - 1)

static char *
put_bytes(char *w, PyObject *b)
{
    memcpy(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
    return w + PyBytes_GET_SIZE(b);
}

static const char DIGIT_PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal digits of v (sprintf's locale and format parsing cost more than the rest),
 * two at a time: the timestamps have 19. */
static char *
put_ll(char *w, long long v)
{
    char tmp[24];
    int i = 24, n;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    if (v < 0)
        *w++ = '-';
    while (u >= 100) {
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        tmp[--i] = DIGIT_PAIRS[d + 1];
        tmp[--i] = DIGIT_PAIRS[d];
    }
    if (u >= 10) {
        tmp[--i] = DIGIT_PAIRS[u * 2 + 1];
        tmp[--i] = DIGIT_PAIRS[u * 2];
    } else {
        tmp[--i] = (char)('0' + u);
    }
    n = 24 - i;
    memcpy(w, tmp + i, n);
    return w + n;
}

/* Python's floor division by 1000 (a duration may be negative if the clock stepped). */
static long long
floor_div_1000(long long v)
{
    long long q = v / 1000;
    if (v % 1000 != 0 && v < 0)
        q -= 1;
    return q;
}

/* An upper bound of what finish() writes besides the session's, the statement's and
 * the tag's members: the literal text (under 250 bytes) and 8 numbers (at most 20
 * characters each). */
#define EVENT_FIXED 420

/*
 * Write the `statement` event of a finished, successful statement and emit it: the same
 * bytes as AuditedHooks._write with sqlstate "" and no parameters. 0 on success.
 */
static int
finish(Trail *t, Pending *p, PyObject *tag_json)
{
    PyObject *fragment = NULL, *event, *res;
    Statement *st = NULL; /* a Statement whose fragment is written from its text */
    EventBuffer *sink;
    char scratch[2048], *start_w, *end_digits;
    Py_ssize_t end_len;
    long long end = now_ns(), bytes_out, rows = 0;
    int has_rows = 0, open;
    Py_ssize_t size, fragment_size;
    char *w;

    if (p->rows != Py_None) {
        rows = PyLong_AsLongLong(p->rows);
        if (rows == -1 && PyErr_Occurred())
            return -1;
        has_rows = 1;
    }
    bytes_out = relay_bytes_out(t);
    if (bytes_out == -1 && PyErr_Occurred())
        return -1;
    if (Py_IS_TYPE(p->statement, &StatementType) &&
        ((Statement *)p->statement)->fragment == NULL) {
        st = (Statement *)p->statement;
        fragment_size = statement_fragment_size(st);
    } else {
        if (Py_IS_TYPE(p->statement, &StatementType))
            fragment = Py_NewRef(((Statement *)p->statement)->fragment);
        else
            fragment = slot_get(&t->fragment, p->statement, str_fragment);
        if (fragment == NULL)
            return -1;
        if (!PyBytes_Check(fragment)) {
            Py_DECREF(fragment);
            PyErr_SetString(PyExc_TypeError, "statement fragment must be bytes");
            return -1;
        }
        fragment_size = PyBytes_GET_SIZE(fragment);
    }
    size = EVENT_FIXED + PyBytes_GET_SIZE(t->id_prefix) + PyBytes_GET_SIZE(t->session) +
           fragment_size + PyBytes_GET_SIZE(tag_json);
    t->counts->statements++;
    open = gate_open(t);
    if (open < 0) {
        Py_XDECREF(fragment);
        return -1;
    }
    sink = open ? (EventBuffer *)t->sink : NULL;
    /* Formatted straight into the writer's pending batch when it takes events without
     * its checks; else where it fits in the stack (most events), then copied once into
     * a bytes object of the exact size for emit: no resize (a realloc) of a fresh one. */
    event = NULL;
    if (sink != NULL) {
        w = eventbuffer_reserve(sink, size);
        if (w == NULL) {
            Py_XDECREF(fragment);
            return -1;
        }
    } else if (size <= (Py_ssize_t)sizeof(scratch)) {
        w = scratch;
    } else {
        event = PyBytes_FromStringAndSize(NULL, size);
        if (event == NULL) {
            Py_XDECREF(fragment);
            return -1;
        }
        w = PyBytes_AS_STRING(event);
    }
    start_w = w;
    w = put(w, "{\"type\":\"statement\",\"at\":");
    end_digits = w;
    w = put_ll(w, end);
    end_len = w - end_digits;
    w = put(w, ",\"id\":");
    w = put_bytes(w, t->id_prefix);
    w = put_ll(w, p->id);
    w = put(w, "\",");
    w = put_bytes(w, t->session);
    *w++ = ',';
    w = st != NULL ? statement_fragment_write(st, w) : put_bytes(w, fragment);
    w = put(w, ",\"start\":");
    w = put_ll(w, p->start);
    w = put(w, ",\"end\":");
    memcpy(w, end_digits, end_len);
    w += end_len;
    w = put(w, ",\"rows\":");
    if (has_rows)
        w = put_ll(w, rows);
    else
        w = put(w, "null");
    w = put(w, ",\"command_tag\":");
    w = put_bytes(w, tag_json);
    w = put(w, ",\"sqlstate\":\"\",\"error_message\":\"\",\"duration_us\":");
    w = put_ll(w, floor_div_1000(end - p->start));
    w = put(w, ",\"bytes_in\":");
    w = put_ll(w, p->bytes_in);
    w = put(w, ",\"bytes_out\":");
    w = put_ll(w, bytes_out - p->out_mark);
    w = put(w, ",\"parameters\":null}");
    Py_XDECREF(fragment);
    if (sink != NULL) {
        /* What AuditWriter.emit does when nothing needs checking. */
        Py_ssize_t n;
        eventbuffer_commit(sink, w);
        n = sink->count;
        if (n == 1 || n >= t->flush_events) {
            res = PyObject_CallNoArgs(t->kick);
            if (res == NULL)
                return -1;
            Py_DECREF(res);
        }
        return 0;
    }
    if (event == NULL)
        event = PyBytes_FromStringAndSize(scratch, w - start_w);
    else
        (void)_PyBytes_Resize(&event, w - start_w);
    if (event == NULL)
        return -1;
    res = PyObject_CallOneArg(t->emit, event);
    Py_DECREF(event);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* A statement sent upstream now: a Pending with the next id at the end of the queue,
 * as AuditedHooks._track does. 0, or -1 on error. */
static int
track(Trail *t, PyObject *statement, long long batch, long long bytes_in)
{
    Pending *p;
    int r;
    long long bytes_out = relay_bytes_out(t);
    if (bytes_out == -1 && PyErr_Occurred())
        return -1;
    p = pending_make(statement, batch, bytes_in, bytes_out);
    if (p == NULL)
        return -1;
    p->id = ++t->counts->seq;
    r = pending_append(t, (PyObject *)p);
    Py_DECREF(p);
    return r;
}

/* 1: handled here; 0: leave it to Python (stop at it); -1: error. */
static int
on_bind(Trail *t, const char *body, Py_ssize_t n, long long batch)
{
    const char *pe, *se;
    PyObject *portal, *name, *prepared, *bound;
    int r;
    if (PyDict_GET_SIZE(t->refused) != 0)
        return 0; /* the relay may have to refuse it */
    r = gate_open(t);
    if (r <= 0)
        return r; /* the audit log may not take it: Python decides */
    pe = memchr(body, 0, n);
    if (pe == NULL)
        return 0;
    se = memchr(pe + 1, 0, n - (pe + 1 - body));
    if (se == NULL)
        return 0;
    if (t->last_name != NULL && PyBytes_GET_SIZE(t->last_name) == se - pe - 1 &&
        memcmp(PyBytes_AS_STRING(t->last_name), pe + 1, se - pe - 1) == 0) {
        name = Py_NewRef(t->last_name);
    } else {
        name = PyBytes_FromStringAndSize(pe + 1, se - pe - 1);
        if (name == NULL)
            return -1;
        Py_XSETREF(t->last_name, Py_NewRef(name));
        Py_CLEAR(t->last_prepared);
    }
#if PY_VERSION_HEX < 0x030C0000
    /* ma_version_tag changes with every change of the dict (PEP 509; deprecated from
     * 3.12, where the lookup is always made). */
    if (t->last_prepared != NULL &&
        ((PyDictObject *)t->statements)->ma_version_tag == t->last_version) {
        prepared = t->last_prepared;
    } else
#endif
    {
        prepared = PyDict_GetItemWithError(t->statements, name); /* borrowed */
        if (prepared != NULL) {
            Py_XSETREF(t->last_prepared, Py_NewRef(prepared));
#if PY_VERSION_HEX < 0x030C0000
            t->last_version = ((PyDictObject *)t->statements)->ma_version_tag;
#endif
        }
    }
    Py_DECREF(name);
    if (prepared == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (t->ps != NULL && pe == body) {
        /* The unnamed portal: into the Portals' members. */
        Portals *ps = t->ps;
        Py_INCREF(prepared); /* (borrowed from the dict or last_prepared) */
        Py_XSETREF(ps->u_prepared, prepared);
        Py_XSETREF(ps->u_params, Py_NewRef(Py_None));
        ps->u_size = (long long)n + 5;
        ps->u_batch = batch;
        return 1;
    }
    portal = PyBytes_FromStringAndSize(body, pe - body);
    if (portal == NULL)
        return -1;
    bound = PyTuple_New(4);
    if (bound == NULL) {
        Py_DECREF(portal);
        return -1;
    }
    PyTuple_SET_ITEM(bound, 0, Py_NewRef(prepared));
    PyTuple_SET_ITEM(bound, 1, Py_NewRef(Py_None));
    PyTuple_SET_ITEM(bound, 2, PyLong_FromLongLong((long long)n + 5));
    PyTuple_SET_ITEM(bound, 3, PyLong_FromLongLong(batch));
    if (PyTuple_GET_ITEM(bound, 2) == NULL || PyTuple_GET_ITEM(bound, 3) == NULL) {
        Py_DECREF(bound);
        Py_DECREF(portal);
        return -1;
    }
    r = PyObject_SetItem(t->portals, portal, bound);
    Py_DECREF(portal);
    Py_DECREF(bound);
    return r < 0 ? -1 : 1;
}

static int
on_execute(Trail *t, const char *body, Py_ssize_t n, long long batch)
{
    const char *pe = memchr(body, 0, n);
    PyObject *portal, *bound;
    long long size;
    if (pe == NULL || n != (pe - body) + 5)
        return 0; /* malformed: Python raises the protocol violation */
    if (t->ps != NULL && pe == body) {
        /* The unnamed portal, from the Portals' members. */
        Portals *ps = t->ps;
        PyObject *statement;
        int r;
        if (ps->u_prepared == NULL || ps->u_params != Py_None)
            return 0;
        statement = Py_NewRef(ps->u_prepared);
        r = track(t, statement, batch, ps->u_size + 5 + 0 + 5);
        Py_DECREF(statement);
        return r < 0 ? -1 : 1;
    }
    portal = PyBytes_FromStringAndSize(body, pe - body);
    if (portal == NULL)
        return -1;
    bound = t->ps != NULL ? PyDict_GetItemWithError(t->ps->named, portal)
                          : PyDict_GetItemWithError(t->portals, portal); /* borrowed */
    if (bound == NULL) {
        Py_DECREF(portal);
        return PyErr_Occurred() ? -1 : 0; /* a SQL cursor's portal, say */
    }
    if (!PyTuple_Check(bound) || PyTuple_GET_SIZE(bound) != 4 ||
        PyTuple_GET_ITEM(bound, 1) != Py_None) {
        Py_DECREF(portal);
        return 0;
    }
    size = PyLong_AsLongLong(PyTuple_GET_ITEM(bound, 2));
    if (size == -1 && PyErr_Occurred()) {
        Py_DECREF(portal);
        return -1;
    }
    size += 5 + PyBytes_GET_SIZE(portal) + 5;
    Py_DECREF(portal);
    return track(t, PyTuple_GET_ITEM(bound, 0), batch, size) < 0 ? -1 : 1;
}

/* The tag as a JSON string if it needs no escaping, else NULL (no exception). */
static PyObject *
tag_json(const char *tag, Py_ssize_t n)
{
    PyObject *out;
    char *w;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)tag[i];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, n + 2);
    if (out == NULL)
        return NULL;
    w = PyBytes_AS_STRING(out);
    w[0] = '"';
    memcpy(w + 1, tag, n);
    w[n + 1] = '"';
    return out;
}

/* The row count of a tag, as gateway.session.audit.rows_of: the digits after its last
 * space (or the whole tag). 1 with *rows set, 0 if it has none, -1 if too long to parse
 * here. */
static int
tag_rows(const char *tag, Py_ssize_t n, long long *rows)
{
    Py_ssize_t i = n;
    long long v = 0;
    while (i > 0 && tag[i - 1] != ' ')
        i--;
    if (i == n)
        return 0;
    if (n - i > 18)
        return -1;
    for (; i < n; i++) {
        if (tag[i] < '0' || tag[i] > '9')
            return 0;
        v = v * 10 + (tag[i] - '0');
    }
    *rows = v;
    return 1;
}

static Pending *
head_of(Trail *t)
{
    PyObject *head;
    if (pending_len(t) <= 0)
        return NULL;
    head = pending_item(t, 0);
    if (head == NULL)
        return NULL;
    if (!Py_IS_TYPE(head, &PendingType)) {
        Py_DECREF(head);
        return NULL;
    }
    return (Pending *)head; /* new reference */
}

static int
is_extended(Trail *t, Pending *p)
{
    PyObject *e;
    int r;
    if (Py_IS_TYPE(p->statement, &StatementType))
        return PyObject_IsTrue(((Statement *)p->statement)->extended);
    e = slot_get(&t->extended, p->statement, str_extended);
    if (e == NULL)
        return -1;
    r = PyObject_IsTrue(e);
    Py_DECREF(e);
    return r;
}

static int
on_complete(Trail *t, const char *body, Py_ssize_t n)
{
    Pending *head;
    PyObject *json, *res;
    long long rows = 0;
    int has_rows, extended, r;
    Py_ssize_t len;
    if (pending_len(t) == 0)
        return 1; /* nothing of ours in flight: AuditedHooks.on_complete does nothing */
    if (n < 1 || body[n - 1] != 0)
        return 0;
    len = n - 1;
    head = head_of(t);
    if (head == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (PyUnicode_GET_LENGTH(head->sqlstate) != 0) {
        Py_DECREF(head);
        return 0;
    }
    has_rows = tag_rows(body, len, &rows);
    if (has_rows < 0) {
        json = NULL;
    } else if (t->last_tag_json != NULL && len == t->last_tag_len &&
               memcmp(body, t->last_tag, len) == 0) {
        json = Py_NewRef(t->last_tag_json);
    } else {
        json = tag_json(body, len);
        if (json != NULL && len <= (Py_ssize_t)sizeof(t->last_tag)) {
            memcpy(t->last_tag, body, len);
            t->last_tag_len = len;
            Py_XSETREF(t->last_tag_json, Py_NewRef(json));
        }
    }
    if (json == NULL) {
        Py_DECREF(head);
        return PyErr_Occurred() ? -1 : 0;
    }
    extended = is_extended(t, head);
    if (extended < 0) {
        r = -1;
    } else if (extended) {
        Py_SETREF(head->rows, has_rows ? PyLong_FromLongLong(rows) : Py_NewRef(Py_None));
        res = head->rows == NULL ? NULL : pending_popleft(t);
        if (res == NULL) {
            r = -1;
        } else {
            Py_DECREF(res);
            Py_SETREF(head->command_tag, Py_NewRef(json));
            r = finish(t, head, json) < 0 ? -1 : 1;
        }
    } else {
        /* A simple Query: every statement's rows count, the last tag is kept. */
        Py_SETREF(head->command_tag, Py_NewRef(json));
        r = 1;
        if (has_rows) {
            long long before = 0;
            if (head->rows != Py_None) {
                before = PyLong_AsLongLong(head->rows);
                if (before == -1 && PyErr_Occurred())
                    r = -1;
            }
            if (r == 1) {
                Py_SETREF(head->rows, PyLong_FromLongLong(before + rows));
                if (head->rows == NULL)
                    r = -1;
            }
        }
    }
    Py_DECREF(json);
    Py_DECREF(head);
    return r;
}

/*
 * ReadyForQuery: handled here when AuditedHooks.on_ready would only drop portals, skip
 * executions that did not run, and finish successful simple queries. ended = the
 * ReadyForQuery ordinal this message has (batches up to it are over).
 */
static int
on_ready(Trail *t, unsigned char status, long long ended)
{
    Py_ssize_t i, n = pending_len(t);
    if (n < 0)
        return -1;
    /* First check that everything this ReadyForQuery ends can be handled here. */
    for (i = 0; i < n; i++) {
        PyObject *o = pending_item(t, i);
        Pending *p;
        int extended;
        if (o == NULL)
            return -1;
        if (!Py_IS_TYPE(o, &PendingType)) {
            Py_DECREF(o);
            return 0;
        }
        p = (Pending *)o;
        if (p->batch > ended) {
            Py_DECREF(o);
            break;
        }
        extended = is_extended(t, p);
        if (extended < 0) {
            Py_DECREF(o);
            return -1;
        }
        if (!extended && PyUnicode_GET_LENGTH(p->sqlstate) != 0) {
            Py_DECREF(o);
            return 0; /* a failed simple query: Python writes its error */
        }
        Py_DECREF(o);
    }
    if (status == 'I') {
        /* Portals end with their transaction (see AuditedHooks.on_ready). */
        if (t->ps != NULL) {
            if (t->ps->u_prepared != NULL && t->ps->u_batch <= ended)
                portals_drop_unnamed(t->ps);
            if (drop_ended(t->ps->named, ended) < 0)
                return -1;
        } else if (drop_ended(t->portals, ended) < 0) {
            return -1;
        }
    }
    for (;;) {
        Pending *p = head_of(t);
        PyObject *res;
        int extended;
        if (p == NULL) {
            if (PyErr_Occurred())
                return -1;
            break;
        }
        if (p->batch > ended) {
            Py_DECREF(p);
            break;
        }
        res = pending_popleft(t);
        if (res == NULL) {
            Py_DECREF(p);
            return -1;
        }
        Py_DECREF(res);
        extended = is_extended(t, p);
        /* an execution still pending at its batch's end was skipped: it did not run */
        if (extended < 0 || (!extended && finish(t, p, p->command_tag) < 0)) {
            Py_DECREF(p);
            return -1;
        }
        Py_DECREF(p);
    }
    return 1;
}

/*
 * How many tabs, CRs and LFs the text has, if it is otherwise printable ASCII without
 * quotes and backslashes (its JSON string is then the text with those three escaped);
 * -1 if it is not. Sixteen bytes at a time where SSE2 is there: this check runs over
 * every simple query an audited session records in C.
 */
static Py_ssize_t
json_plain_escapes(const char *text, Py_ssize_t len)
{
    Py_ssize_t i = 0, escapes = 0;
#ifdef __SSE2__
    const __m128i space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f),
                  quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'),
                  tab = _mm_set1_epi8('\t'), cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
    for (; i + 16 <= len; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(text + i));
        /* signed compare: bytes >= 0x80 are negative, so below 0x20 as well */
        __m128i control = _mm_cmplt_epi8(v, space);
        __m128i esc = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, tab), _mm_cmpeq_epi8(v, cr)),
                                   _mm_cmpeq_epi8(v, lf));
        __m128i bad = _mm_or_si128(
            _mm_or_si128(_mm_andnot_si128(esc, control), _mm_cmpeq_epi8(v, del)),
            _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)));
        if (_mm_movemask_epi8(bad) != 0)
            return -1;
        escapes += __builtin_popcount((unsigned)_mm_movemask_epi8(esc));
    }
#endif
    for (; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\t' || c == '\r' || c == '\n')
            escapes++;
        else if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return -1;
    }
    return escapes;
}

/*
 * A simple Query whose text has a shape (gateway.sql.shape) this session already had
 * allowed under the current policy version: what PolicyHooks would decide from the
 * decision cache's shape tier, without calling back. Audited sessions also record it.
 * 1 handled, 0 Python's, -1 error.
 */
static int
on_query(Trail *t, const char *body, Py_ssize_t n, long long batch)
{
    PyObject *raw, *masked, *entry, *unsafe;
    long long version, mine, hits;
    Py_ssize_t len = n - 1, escapes = 0;
    if (PyDict_GET_SIZE(t->shapes) == 0)
        return 0;
    if (n < 1 || body[n - 1] != 0 || memchr(body, 0, len) != NULL)
        return 0; /* malformed: Python raises the protocol violation */
    version = get_ll(t->cache, str_version);
    if (version == -1 && PyErr_Occurred())
        return -1;
    mine = slot_get_ll(&t->hooks_version, t->hooks, str_hooks_version);
    if (mine == -1 && PyErr_Occurred())
        return -1;
    if (version != mine)
        return 0; /* reloaded: PolicyHooks forgets what it allowed (in context()) */
    unsafe = slot_get(&t->hooks_unsafe, t->hooks, str_unsafe);
    if (unsafe == NULL)
        return -1;
    Py_DECREF(unsafe);
    if (unsafe != Py_None)
        return 0;
    switch (gate_open(t)) {
    case -1:
        return -1;
    case 0:
        return 0; /* the audit log may not take it: Python decides (and refuses) */
    }
    raw = PyBytes_FromStringAndSize(body, len);
    if (raw == NULL)
        return -1;
    masked = PyObject_CallOneArg(t->shape_fn, raw);
    if (masked == NULL) {
        Py_DECREF(raw);
        return -1;
    }
    entry = masked == Py_None ? NULL : PyDict_GetItemWithError(t->shapes, masked);
    Py_DECREF(masked);
    if (entry == NULL || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
        Py_DECREF(raw);
        return PyErr_Occurred() ? -1 : 0;
    }
    hits = increment(t->cache, str_shape_hits);
    if (hits < 0) {
        Py_DECREF(raw);
        return -1;
    }
    if (t->audit) {
        /* A text with a shape is ASCII without quotes, backslashes or control characters
         * other than tab, CR and LF: its JSON only escapes those three. */
        PyObject *suffix = PyTuple_GET_ITEM(entry, 2);
        Statement *st;
        int r;
        if (!PyBytes_Check(suffix)) {
            Py_DECREF(raw);
            PyErr_SetString(PyExc_TypeError, "shape entry without an event suffix");
            return -1;
        }
        escapes = json_plain_escapes(body, len);
        if (escapes < 0) {
            Py_DECREF(raw);
            return 0; /* not a shape's alphabet after all: Python's */
        }
        st = PyObject_New(Statement, &StatementType);
        if (st == NULL) {
            Py_DECREF(raw);
            return -1;
        }
        st->raw = raw; /* (its reference moves here) */
        st->suffix = Py_NewRef(suffix);
        st->escapes = escapes;
        st->fragment = NULL;
        st->text = NULL;
        st->fingerprint = Py_NewRef(PyTuple_GET_ITEM(entry, 1));
        st->decision = Py_NewRef(PyTuple_GET_ITEM(entry, 0));
        st->protocol = Py_NewRef(str_simple);
        st->extended = Py_NewRef(Py_False);
        r = track(t, (PyObject *)st, batch, len + 6);
        Py_DECREF(st);
        if (r < 0)
            return -1;
    } else {
        Py_DECREF(raw);
    }
    return 1;
}

/* A walk (gateway.wire.scan.scan_py's contract) from w->pos that also handles the
 * watched messages it can inline. side 0 = frontend. 0 with *stop set, -1 on error. Also
 * called directly by the framer's read step (see CWalks in _walk.h). */
static int
walk_c(PyObject *self, int side, const unsigned char *p, Py_ssize_t n,
       const unsigned char *act, Py_ssize_t max_size, Walk *w, long *stop_out)
{
    Trail *t = (Trail *)self;
    long long base = -1; /* the framer's requests (frontend) or readies (backend) */
    long stop;
    for (;;) {
        int r = 0;
        const char *body;
        Py_ssize_t blen;
        unsigned char ty;
        stop = walk_headers(w, p, n, act, max_size);
        if (stop < 0 || !t->fast)
            break;
        ty = (unsigned char)stop;
        body = (const char *)p + w->pos + 5;
        blen = w->end - w->pos - 5;
        if (base < 0) {
            base = side == 0 ? slot_get_ll(&t->requests, t->frontend, str_requests)
                             : slot_get_ll(&t->readies, t->backend, str_readies);
            if (base == -1 && PyErr_Occurred())
                return -1;
        }
        if (side == 0) {
            if (ty == 'Q') {
                /* A Query is its own request: counted once handled. */
                r = on_query(t, body, blen, base + w->requests + 1);
                if (r == 1)
                    w->requests++;
            } else if (t->audit && ty == 'B') {
                r = on_bind(t, body, blen, base + w->requests + 1);
            } else if (t->audit && ty == 'E') {
                r = on_execute(t, body, blen, base + w->requests + 1);
            }
        } else if (t->audit && ty == 'C') {
            r = on_complete(t, body, blen);
        } else if (t->audit && ty == 'Z' && blen == 1 &&
                   (body[0] == 'I' || body[0] == 'T' || body[0] == 'E')) {
            r = on_ready(t, (unsigned char)body[0], base + w->readies + 1);
            if (r == 1) {
                w->status = (unsigned char)body[0];
                w->readies++;
            }
        }
        if (r < 0)
            return -1;
        if (r == 0)
            break; /* Python's: stop at it, as at any watched message */
        w->pos = w->end;
    }
    *stop_out = stop;
    return 0;
}

/* walk_c behind the scan method's calling convention. */
static PyObject *
walk(Trail *t, PyObject *const *args, Py_ssize_t nargs, int side)
{
    Py_buffer data, actions;
    Py_ssize_t pos, max_size;
    Walk w = {0, 0, 0, 0, -1};
    PyObject *result = NULL;
    long stop;

    if (walk_args(args, nargs, &data, &actions, &pos, &max_size) < 0)
        return NULL;
    w.pos = pos;
    if (walk_c((PyObject *)t, side, (const unsigned char *)data.buf, data.len,
               (const unsigned char *)actions.buf, max_size, &w, &stop) == 0)
        result = walk_result(&w, stop);
    PyBuffer_Release(&data);
    PyBuffer_Release(&actions);
    return result;
}

static PyObject *
Trail_scan_frontend(Trail *t, PyObject *const *args, Py_ssize_t nargs)
{
    return walk(t, args, nargs, 0);
}

static PyObject *
Trail_scan_backend(Trail *t, PyObject *const *args, Py_ssize_t nargs)
{
    return walk(t, args, nargs, 1);
}

static PyObject *
Trail_close(Trail *t, PyObject *unused)
{
    Trail_clear(t);
    Py_RETURN_NONE;
}

static PyMethodDef Trail_methods[] = {
    {"scan_frontend", (PyCFunction)(void (*)(void))Trail_scan_frontend, METH_FASTCALL,
     "scan() of client bytes that also follows Bind and Execute."},
    {"scan_backend", (PyCFunction)(void (*)(void))Trail_scan_backend, METH_FASTCALL,
     "scan() of server bytes that also follows CommandComplete and ReadyForQuery."},
    {"close", (PyCFunction)Trail_close, METH_NOARGS,
     "Drop every reference (the session ended); later walks handle nothing inline."},
    {NULL},
};

static PyTypeObject TrailType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.session._trail.Trail",
    .tp_basicsize = sizeof(Trail),
    .tp_dealloc = (destructor)Trail_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C fast path of one session's audit trail.",
    .tp_traverse = (traverseproc)Trail_traverse,
    .tp_clear = (inquiry)Trail_clear,
    .tp_methods = Trail_methods,
    .tp_new = Trail_new,
};

static PyObject *
module_json_plain_escapes(PyObject *Py_UNUSED(m), PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "bytes expected");
        return NULL;
    }
    return PyLong_FromSsize_t(json_plain_escapes(PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg)));
}

static PyMethodDef module_methods[] = {
    {"json_plain_escapes", module_json_plain_escapes, METH_O,
     "The tabs, CRs and LFs of a text that is otherwise printable ASCII without quotes "
     "and backslashes; -1 for any other text (what the C path checks of a query it "
     "records)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.session._trail",
    "C fast path of the session audit trail (see gateway.session.audit).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__trail(void)
{
    PyObject *m;
    if (PyType_Ready(&PendingType) < 0 || PyType_Ready(&TrailType) < 0 ||
        PyType_Ready(&StatementType) < 0)
        return NULL;
#define INTERN(var, text)                                                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                  \
        return NULL;
    INTERN(str_bytes_out, "bytes_out");
    INTERN(str_requests, "requests");
    INTERN(str_readies, "readies");
    INTERN(str_fragment, "fragment");
    INTERN(str_extended, "extended");
    INTERN(str_popleft, "popleft");
    INTERN(str_append, "append");
    INTERN(str_version, "version");
    INTERN(str_shape_hits, "shape_hits");
    INTERN(str_unsafe, "_unsafe");
    INTERN(str_simple, "simple");
    INTERN(str_hooks_version, "_version");
    INTERN(str_server_data, "server_data");
    INTERN(str_bytes, "bytes");
#undef INTERN
    if ((empty_str = PyUnicode_FromString("")) == NULL)
        return NULL;
    if ((empty_tag = PyBytes_FromString("\"\"")) == NULL)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    {
        /* Let the framer's read step call the walks directly (CWalks in _walk.h). The
         * header walk's module is optional too: without it, the methods serve. */
        static CWalks walks = {(PyCFunction)(void (*)(void))Trail_scan_frontend,
                               (PyCFunction)(void (*)(void))Trail_scan_backend, walk_c};
        PyObject *speedups = PyImport_ImportModule("gateway.wire._speedups"), *capsule, *r;
        if (speedups == NULL) {
            PyErr_Clear();
        } else {
            capsule = PyCapsule_New(&walks, CWALKS_CAPSULE, NULL);
            r = capsule == NULL ? NULL
                                : PyObject_CallMethod(speedups, "register_walks", "O", capsule);
            Py_XDECREF(capsule);
            Py_DECREF(speedups);
            if (r == NULL) {
                Py_DECREF(m);
                return NULL;
            }
            Py_DECREF(r);
        }
    }
    {
        /* The writer's event buffer (optional like this module: without it, emit). */
        PyObject *pending = PyImport_ImportModule("gateway.audit._pending");
        if (pending == NULL) {
            PyErr_Clear();
        } else {
            PyObject *type = PyObject_GetAttrString(pending, "EventBuffer");
            Py_DECREF(pending);
            if (type == NULL || !PyType_Check(type)) {
                Py_XDECREF(type);
                Py_DECREF(m);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "EventBuffer is not a type");
                return NULL;
            }
            EventBuffer_T = (PyTypeObject *)type; /* kept for the life of the process */
        }
    }
    if (PyType_Ready(&QueueType) < 0 ||
        PyModule_AddObjectRef(m, "Queue", (PyObject *)&QueueType) < 0)
        return NULL;
    if (PyModule_AddObjectRef(m, "Statement", (PyObject *)&StatementType) < 0)
        return NULL;
    if (PyType_Ready(&CountersType) < 0 ||
        PyModule_AddObjectRef(m, "Counters", (PyObject *)&CountersType) < 0)
        return NULL;
    if (PyType_Ready(&PortalsType) < 0 ||
        PyModule_AddObjectRef(m, "Portals", (PyObject *)&PortalsType) < 0)
        return NULL;
    Py_INCREF(&PendingType);
    if (PyModule_AddObject(m, "Pending", (PyObject *)&PendingType) < 0)
        return NULL;
    Py_INCREF(&TrailType);
    if (PyModule_AddObject(m, "Trail", (PyObject *)&TrailType) < 0)
        return NULL;
    return m;
}
