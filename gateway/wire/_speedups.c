/*
 * Optional C implementation of the framer's hot path.
 *
 * - scan: the message-header walk (semantics defined by gateway.wire.scan.scan_py; tests
 *   run both against the same corpus).
 * - FramerCore: the state a Framer keeps between reads (gateway.wire.framer.Framer
 *   subclasses it), held in C so that Forward can read and update it without attribute
 *   lookups.
 * - Forward: the callable a session's relay uses for each read of one direction. When
 *   the read holds only messages the walk passes or counts (the common case), it updates
 *   the framer and hands the same bytes object to the writer, all without a Python frame.
 *   Anything else — a watched message, a carried-over message, a bad length — goes to
 *   the Python callbacks (with the walk's result: no byte is walked twice), which own
 *   every other case. Python defines the behaviour; this
 *   only takes the shortest road through it.
 *
 * This file knows nothing else about the protocol, and nothing about sockets.
 */
#include "_walk.h"
#include <structmember.h>

/*
 * scan(data, pos, actions, max_size) -> (pos, stop, end, requests, readies, status)
 *
 * Walk complete messages of data[pos:] (see walk_headers in _walk.h): PASS messages are
 * skipped, REQUEST messages counted, READY messages (ReadyForQuery) counted and their
 * status byte kept. The walk stops at a complete WATCH message (stop = its type,
 * data[pos:end] is the message), at an invalid length (stop = -2, end = the length), at
 * an invalid ReadyForQuery (stop = -3), or when fewer than a whole message remains
 * (stop = -1).
 */
static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, actions;
    Py_ssize_t pos, max_size;
    Walk w = {0, 0, 0, 0, -1};
    long stop;
    if (walk_args(args, nargs, &data, &actions, &pos, &max_size) < 0)
        return NULL;
    w.pos = pos;
    stop = walk_headers(&w, (const unsigned char *)data.buf, data.len,
                        (const unsigned char *)actions.buf, max_size);
    PyBuffer_Release(&data);
    PyBuffer_Release(&actions);
    return walk_result(&w, stop);
}

/* ---- FramerCore ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *actions; /* bytearray of 256 actions */
    PyObject *scan;    /* the header walk (scan's contract) */
    PyObject *pending; /* bytearray: incomplete header or watched message */
    Py_ssize_t max_message_size;
    Py_ssize_t skip; /* bytes of a pass-through message still to come */
    Py_ssize_t requests, readies;
    long status;
} FramerCore;

static int
FramerCore_traverse(FramerCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->actions);
    Py_VISIT(self->scan);
    Py_VISIT(self->pending);
    return 0;
}

static int
FramerCore_clear(FramerCore *self)
{
    Py_CLEAR(self->actions);
    Py_CLEAR(self->scan);
    Py_CLEAR(self->pending);
    return 0;
}

static void
FramerCore_dealloc(FramerCore *self)
{
    PyObject_GC_UnTrack(self);
    FramerCore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
FramerCore_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    FramerCore *self = (FramerCore *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->status = -1;
    return (PyObject *)self;
}

static PyMemberDef FramerCore_members[] = {
    {"actions", T_OBJECT_EX, offsetof(FramerCore, actions), 0, "action table (256 bytes)"},
    {"scan", T_OBJECT_EX, offsetof(FramerCore, scan), 0, "the header walk"},
    {"_pending", T_OBJECT_EX, offsetof(FramerCore, pending), 0, NULL},
    {"max_message_size", T_PYSSIZET, offsetof(FramerCore, max_message_size), 0, NULL},
    {"_skip", T_PYSSIZET, offsetof(FramerCore, skip), 0, NULL},
    {"requests", T_PYSSIZET, offsetof(FramerCore, requests), 0, NULL},
    {"readies", T_PYSSIZET, offsetof(FramerCore, readies), 0, NULL},
    {"status", T_LONG, offsetof(FramerCore, status), 0, NULL},
    {NULL},
};

static PyTypeObject FramerCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.wire._speedups.FramerCore",
    .tp_doc = "The state of a Framer between reads (see gateway.wire.framer.Framer).",
    .tp_basicsize = sizeof(FramerCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = FramerCore_new,
    .tp_dealloc = (destructor)FramerCore_dealloc,
    .tp_traverse = (traverseproc)FramerCore_traverse,
    .tp_clear = (inquiry)FramerCore_clear,
    .tp_members = FramerCore_members,
};

/* ---- Forward ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    FramerCore *framer;     /* NULL once closed */
    PyObject *write;        /* the writer's write(bytes) */
    PyObject *on_carried;   /* on_carried(data): the whole read, framer untouched */
    PyObject *on_scanned;   /* on_scanned(data, scanned): the read after framer.scan */
    PyObject *max_obj;      /* max_message_size as an int, for custom scans */
    Py_ssize_t max_cached;
    Py_ssize_t bytes;       /* bytes of every read, whichever road it took */
} Forward;

static PyObject *default_scan; /* this module's scan function */
static CWalks cwalks;          /* walks registered by their C owner (see _walk.h) */
static PyObject *cwalks_capsule;
static PyObject *zero;         /* the int 0, the position every custom scan starts at */

static int
Forward_traverse(Forward *self, visitproc visit, void *arg)
{
    Py_VISIT(self->framer);
    Py_VISIT(self->write);
    Py_VISIT(self->on_carried);
    Py_VISIT(self->on_scanned);
    return 0;
}

static int
Forward_clear(Forward *self)
{
    Py_CLEAR(self->framer);
    Py_CLEAR(self->write);
    Py_CLEAR(self->on_carried);
    Py_CLEAR(self->on_scanned);
    Py_CLEAR(self->max_obj);
    return 0;
}

static void
Forward_dealloc(Forward *self)
{
    PyObject_GC_UnTrack(self);
    Forward_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
call1(PyObject *fn, PyObject *a)
{
    PyObject *args[2] = {NULL, a};
    return PyObject_Vectorcall(fn, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* Commit a clean walk to the framer: counters, and the trailing pass-through message
 * whose rest is still to come (tail_end > n), exactly as Framer._feed_from would. */
static inline void
commit(FramerCore *fr, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t end, long requests,
       long readies, long status)
{
    fr->requests += requests;
    if (readies) {
        fr->readies += readies;
        fr->status = status;
    }
    fr->skip = pos < n ? end - n : 0;
}

/* A walk that stopped at pos with nothing to act on: the read ends at a message boundary,
 * or inside a pass-through message whose header is complete. */
static inline int
clean_stop(long stop, const unsigned char *p, Py_ssize_t n, Py_ssize_t pos,
           const unsigned char *act)
{
    if (stop != STOP_NONE)
        return 0;
    return pos == n || (n - pos >= 5 && act[p[pos]] == ACT_PASS);
}

/* After a custom walk of the whole read: commit and write if it ended clean, else hand
 * the read and the walk's result to on_scanned. fr is held by the caller. */
static PyObject *
Forward_after_walk(Forward *self, FramerCore *fr, PyObject *data, const unsigned char *p,
                   Py_ssize_t n, const unsigned char *act, const Walk *w, long stop)
{
    PyObject *res, *ret, *args[3];
    if (self->framer != fr)
        /* Closed by what the walk ran: the read goes where closed reads go. */
        return call1(self->on_carried, data);
    if (fr->skip == 0 && w->pos >= 0 && w->pos <= n && clean_stop(stop, p, n, w->pos, act)) {
        commit(fr, n, w->pos, w->end, w->requests, w->readies, w->status);
        return call1(self->write, data);
    }
    res = walk_result(w, stop);
    if (res == NULL)
        return NULL;
    args[0] = NULL;
    args[1] = data;
    args[2] = res;
    ret = PyObject_Vectorcall(self->on_scanned, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                              NULL);
    Py_DECREF(res);
    return ret;
}

/* 0 (frontend) or 1 (backend) when scan is a bound method of a registered C walk, else
 * -1. */
static int
cwalk_side(PyObject *scan)
{
    PyCFunction meth;
    if (cwalks.walk == NULL || !PyCFunction_Check(scan) || PyCFunction_GET_SELF(scan) == NULL)
        return -1;
    meth = PyCFunction_GET_FUNCTION(scan);
    return meth == cwalks.frontend ? 0 : meth == cwalks.backend ? 1 : -1;
}

static PyObject *
Forward_custom_scan(Forward *self, FramerCore *fr, PyObject *data, const unsigned char *p,
                    Py_ssize_t n, const unsigned char *act)
{
    PyObject *args[5], *res, *ret;
    Py_ssize_t v[6];
    int i, side = cwalk_side(fr->scan);
    if (side >= 0) {
        /* The session's own walk, called directly. It may run Python code that changes
         * the framer or closes this forwarder: hold what it uses. */
        PyObject *walker = PyCFunction_GET_SELF(fr->scan);
        Walk w = {0, 0, 0, 0, -1};
        long stop = STOP_NONE;
        int r;
        Py_INCREF(fr);
        Py_INCREF(walker);
        r = cwalks.walk(walker, side, p, n, act, fr->max_message_size, &w, &stop);
        Py_DECREF(walker);
        ret = r < 0 ? NULL : Forward_after_walk(self, fr, data, p, n, act, &w, stop);
        Py_DECREF(fr);
        return ret;
    }
    if (self->max_obj == NULL || self->max_cached != fr->max_message_size) {
        Py_XDECREF(self->max_obj);
        self->max_obj = PyLong_FromSsize_t(fr->max_message_size);
        if (self->max_obj == NULL)
            return NULL;
        self->max_cached = fr->max_message_size;
    }
    args[0] = NULL;
    args[1] = data;
    args[2] = zero;
    args[3] = fr->actions;
    args[4] = self->max_obj;
    /* The scan may run Python code that changes the framer: hold what we use. */
    Py_INCREF(fr);
    res = PyObject_Vectorcall(fr->scan, args + 1, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (res == NULL) {
        Py_DECREF(fr);
        return NULL;
    }
    if (!PyTuple_CheckExact(res) || PyTuple_GET_SIZE(res) != 6) {
        Py_DECREF(fr);
        Py_DECREF(res);
        PyErr_SetString(PyExc_TypeError, "a scan must return a tuple of 6 ints");
        return NULL;
    }
    for (i = 0; i < 6; i++) {
        v[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(res, i));
        if (v[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(fr);
            Py_DECREF(res);
            return NULL;
        }
    }
    Py_DECREF(res);
    {
        Walk w = {v[0], v[2], (long)v[3], (long)v[4], (long)v[5]};
        ret = Forward_after_walk(self, fr, data, p, n, act, &w, (long)v[1]);
    }
    Py_DECREF(fr);
    return ret;
}

static PyObject *
Forward_vectorcall(Forward *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *data;
    FramerCore *fr = self->framer;
    const unsigned char *p, *act;
    Py_ssize_t n, start = 0;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "Forward expects one positional argument");
        return NULL;
    }
    data = args[0];
    if (!PyBytes_CheckExact(data)) {
        n = PyObject_Length(data);
        if (n < 0)
            return NULL;
        self->bytes += n;
        return call1(self->on_carried, data);
    }
    n = PyBytes_GET_SIZE(data);
    self->bytes += n;
    if (fr == NULL)
        return call1(self->on_carried, data);
    if (fr->actions == NULL || !PyByteArray_CheckExact(fr->actions) ||
        PyByteArray_GET_SIZE(fr->actions) < 256 || fr->pending == NULL ||
        !PyByteArray_CheckExact(fr->pending) || PyByteArray_GET_SIZE(fr->pending) ||
        fr->scan == NULL)
        return call1(self->on_carried, data);
    p = (const unsigned char *)PyBytes_AS_STRING(data);
    act = (const unsigned char *)PyByteArray_AS_STRING(fr->actions);
    if (fr->scan != default_scan) {
        /* A session's own walk acts as it goes: it runs once, from a boundary. */
        if (fr->skip)
            return call1(self->on_carried, data);
        return Forward_custom_scan(self, fr, data, p, n, act);
    }
    if (fr->skip) {
        if (fr->skip >= n) {
            fr->skip -= n;
            return call1(self->write, data);
        }
        start = fr->skip;
    }
    {
        Walk w = {start, 0, 0, 0, -1};
        long stop = walk_headers(&w, p, n, act, fr->max_message_size);
        PyObject *res, *ret, *cargs[3];
        if (clean_stop(stop, p, n, w.pos, act)) {
            commit(fr, n, w.pos, w.end, w.requests, w.readies, w.status);
            return call1(self->write, data);
        }
        /* Python carries on from where the walk stopped; the carried-over head of the read
         * (data[:start]) is forwarded with the rest, so the framer no longer owes it. */
        fr->skip = 0;
        res = walk_result(&w, stop);
        if (res == NULL)
            return NULL;
        cargs[0] = NULL;
        cargs[1] = data;
        cargs[2] = res;
        ret = PyObject_Vectorcall(self->on_scanned, cargs + 1,
                                  2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(res);
        return ret;
    }
}

static PyObject *
Forward_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"framer", "write", "on_carried", "on_scanned", NULL};
    PyObject *framer, *write, *on_carried, *on_scanned;
    Forward *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOO:Forward", kwlist, &FramerCoreType,
                                     &framer, &write, &on_carried, &on_scanned))
        return NULL;
    self = (Forward *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)Forward_vectorcall;
    Py_INCREF(framer);
    self->framer = (FramerCore *)framer;
    Py_INCREF(write);
    self->write = write;
    Py_INCREF(on_carried);
    self->on_carried = on_carried;
    Py_INCREF(on_scanned);
    self->on_scanned = on_scanned;
    return (PyObject *)self;
}

/* close(on_data): forget the framer and the writer; every later read goes to on_data. */
static PyObject *
Forward_close(Forward *self, PyObject *on_data)
{
    Py_CLEAR(self->framer);
    Py_CLEAR(self->write);
    Py_CLEAR(self->on_scanned);
    Py_INCREF(on_data);
    Py_XSETREF(self->on_carried, on_data);
    Py_RETURN_NONE;
}

static PyMethodDef Forward_methods[] = {
    {"close", (PyCFunction)Forward_close, METH_O,
     "Forget the framer and the writer; later reads go to the given callable."},
    {NULL},
};

static PyMemberDef Forward_members[] = {
    {"bytes", T_PYSSIZET, offsetof(Forward, bytes), READONLY, "bytes of every read"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Forward, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject ForwardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.wire._speedups.Forward",
    .tp_doc = "Forward(framer, write, on_carried, on_scanned): frame one direction's reads "
              "and forward them (see gateway.wire.framer.Forward).",
    .tp_basicsize = sizeof(Forward),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = Forward_new,
    .tp_dealloc = (destructor)Forward_dealloc,
    .tp_traverse = (traverseproc)Forward_traverse,
    .tp_clear = (inquiry)Forward_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Forward, vectorcall),
    .tp_methods = Forward_methods,
    .tp_members = Forward_members,
};

/* register_walks(capsule): the C walks Forward calls directly (CWalks in _walk.h). */
static PyObject *
register_walks(PyObject *self, PyObject *capsule)
{
    CWalks *c = (CWalks *)PyCapsule_GetPointer(capsule, CWALKS_CAPSULE);
    if (c == NULL)
        return NULL;
    cwalks = *c;
    Py_INCREF(capsule);
    Py_XSETREF(cwalks_capsule, capsule);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "Walk message headers; see gateway.wire.scan.scan_py for the contract."},
    {"register_walks", (PyCFunction)register_walks, METH_O,
     "Register C walks that Forward calls directly (internal: gateway.session._trail)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.wire._speedups",
    "C implementation of the framer's header walk and read forwarding.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m;
    if (PyType_Ready(&FramerCoreType) < 0 || PyType_Ready(&ForwardType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    default_scan = PyObject_GetAttrString(m, "scan");
    zero = PyLong_FromLong(0);
    if (default_scan == NULL || zero == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FramerCoreType);
    if (PyModule_AddObject(m, "FramerCore", (PyObject *)&FramerCoreType) < 0) {
        Py_DECREF(&FramerCoreType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ForwardType);
    if (PyModule_AddObject(m, "Forward", (PyObject *)&ForwardType) < 0) {
        Py_DECREF(&ForwardType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
