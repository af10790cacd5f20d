/*
 * Direct socket I/O for an established plain-TCP session (gateway.server.fastio).
 *
 * An Endpoint owns a duplicate of one socket's file descriptor. While the session's
 * asyncio transport has reading paused, the event loop calls Endpoint.readable when the
 * socket is readable (loop.add_reader); it makes one recv() into a shared buffer and
 * hands the bytes to the session's relay. Endpoint.write sends with one send() when the
 * transport has nothing buffered, and gives the transport whatever the socket did not
 * take (EAGAIN, a partial send, an error), so the transport keeps ordering, buffering,
 * flow control and error handling. What this saves over the transport is its per-read and
 * per-write machinery (a Python-level callback with a context switch, a deferred write
 * queued to the end of the loop iteration), which is most of pgwarden's user CPU per
 * statement.
 *
 * It knows nothing about the protocol: the relay frames and decides; this moves bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* One read of at most this many bytes per readiness event, as uvloop's own buffer. */
#define READ_SIZE (256 * 1024)
static char read_buffer[READ_SIZE];

typedef struct {
    PyObject_HEAD
    int fd;                  /* the duplicate we own; -1 once closed */
    PyObject *t_write;       /* transport.write */
    PyObject *t_writelines;  /* transport.writelines */
    PyObject *t_buffered;    /* transport.get_write_buffer_size */
    PyObject *on_data;       /* on_data(bytes): each read (None until bound) */
    PyObject *on_eof;        /* on_eof(errno): end of stream (0) or a read error */
    PyObject *on_error;      /* on_error(exc): on_data raised */
    Py_ssize_t reads, sends, handed; /* reads made; writes sent whole; writes handed over */
} Endpoint;

static PyObject *empty_join; /* b"".join */

static int
Endpoint_traverse(Endpoint *self, visitproc visit, void *arg)
{
    Py_VISIT(self->t_write);
    Py_VISIT(self->t_writelines);
    Py_VISIT(self->t_buffered);
    Py_VISIT(self->on_data);
    Py_VISIT(self->on_eof);
    Py_VISIT(self->on_error);
    return 0;
}

static void
Endpoint_unbind(Endpoint *self)
{
    Py_CLEAR(self->on_data);
    Py_CLEAR(self->on_eof);
    Py_CLEAR(self->on_error);
}

static int
Endpoint_clear(Endpoint *self)
{
    Endpoint_unbind(self);
    Py_CLEAR(self->t_write);
    Py_CLEAR(self->t_writelines);
    Py_CLEAR(self->t_buffered);
    return 0;
}

static void
Endpoint_dealloc(Endpoint *self)
{
    PyObject_GC_UnTrack(self);
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    Endpoint_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Endpoint(fd, transport): fd is a duplicate the endpoint now owns (closed by close()). */
static PyObject *
Endpoint_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "transport", NULL};
    int fd;
    PyObject *transport;
    Endpoint *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO:Endpoint", kwlist, &fd, &transport))
        return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "fd must be >= 0");
        return NULL;
    }
    self = (Endpoint *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    self->t_write = PyObject_GetAttrString(transport, "write");
    self->t_writelines = PyObject_GetAttrString(transport, "writelines");
    self->t_buffered = PyObject_GetAttrString(transport, "get_write_buffer_size");
    if (self->t_write == NULL || self->t_writelines == NULL || self->t_buffered == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->fd = fd;
    return (PyObject *)self;
}

static PyObject *
call1(PyObject *fn, PyObject *a)
{
    PyObject *args[2] = {NULL, a};
    return PyObject_Vectorcall(fn, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* 1 when the transport holds bytes not yet sent (ours must go after them), 0 if not. */
static int
transport_busy(Endpoint *self)
{
    PyObject *size = PyObject_Vectorcall(self->t_buffered, NULL, 0, NULL);
    long n;
    if (size == NULL)
        return -1;
    n = PyLong_AsLong(size);
    Py_DECREF(size);
    if (n == -1 && PyErr_Occurred())
        return -1;
    return n != 0;
}

/* Send p[:len] (the buffer of `data`); hand the transport what the socket does not take. */
static PyObject *
send_or_hand(Endpoint *self, PyObject *data, const char *p, Py_ssize_t len)
{
    Py_ssize_t sent = 0;
    int busy;
    if (self->fd < 0)
        return call1(self->t_write, data);
    busy = transport_busy(self);
    if (busy < 0)
        return NULL;
    if (busy) {
        self->handed++;
        return call1(self->t_write, data);
    }
    while (sent < len) {
        ssize_t n = send(self->fd, p + sent, (size_t)(len - sent), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* EAGAIN: the transport waits for the socket. Any other error: the transport
             * meets it on its own write and closes the session the usual way. */
            break;
        }
        sent += n;
    }
    if (sent == len) {
        self->sends++;
        Py_RETURN_NONE;
    }
    self->handed++;
    if (sent == 0)
        return call1(self->t_write, data);
    {
        PyObject *rest = PyBytes_FromStringAndSize(p + sent, len - sent), *r;
        if (rest == NULL)
            return NULL;
        r = call1(self->t_write, rest);
        Py_DECREF(rest);
        return r;
    }
}

static PyObject *
Endpoint_write(Endpoint *self, PyObject *data)
{
    Py_buffer view;
    PyObject *r;
    if (PyBytes_CheckExact(data))
        return send_or_hand(self, data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    r = send_or_hand(self, data, (const char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return r;
}

static PyObject *
Endpoint_writelines(Endpoint *self, PyObject *chunks)
{
    PyObject *joined, *r;
    if (self->fd < 0)
        return call1(self->t_writelines, chunks);
    joined = call1(empty_join, chunks);
    if (joined == NULL)
        return NULL;
    r = send_or_hand(self, joined, PyBytes_AS_STRING(joined), PyBytes_GET_SIZE(joined));
    Py_DECREF(joined);
    return r;
}

/* The event loop's reader callback: one recv(), its bytes to on_data. */
static PyObject *
Endpoint_readable(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    ssize_t n;
    PyObject *data, *r;
    if (self->fd < 0 || self->on_data == NULL)
        Py_RETURN_NONE;
    do {
        n = recv(self->fd, read_buffer, READ_SIZE, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        Py_RETURN_NONE;
    if (n <= 0) {
        PyObject *code = PyLong_FromLong(n == 0 ? 0 : errno);
        PyObject *on_eof = self->on_eof;
        if (code == NULL)
            return NULL;
        if (on_eof == NULL) {
            Py_DECREF(code);
            Py_RETURN_NONE;
        }
        Py_INCREF(on_eof);
        r = call1(on_eof, code);
        Py_DECREF(on_eof);
        Py_DECREF(code);
        return r;
    }
    self->reads++;
    data = PyBytes_FromStringAndSize(read_buffer, n);
    if (data == NULL)
        return NULL;
    {
        /* on_data may unbind this endpoint: hold the callbacks for the call. */
        PyObject *on_data = self->on_data, *on_error = self->on_error;
        Py_INCREF(on_data);
        Py_XINCREF(on_error);
        r = call1(on_data, data);
        Py_DECREF(data);
        Py_DECREF(on_data);
        if (r == NULL && on_error != NULL) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            if (tb != NULL && value != NULL)
                PyException_SetTraceback(value, tb);
            r = value != NULL ? call1(on_error, value) : NULL;
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
        }
        Py_XDECREF(on_error);
    }
    return r;
}

/* bind(on_data, on_eof, on_error): where reads go from now on. */
static PyObject *
Endpoint_bind(Endpoint *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "bind expects (on_data, on_eof, on_error)");
        return NULL;
    }
    Endpoint_unbind(self);
    Py_INCREF(args[0]);
    self->on_data = args[0];
    Py_INCREF(args[1]);
    self->on_eof = args[1];
    Py_INCREF(args[2]);
    self->on_error = args[2];
    Py_RETURN_NONE;
}

/* close(): close the duplicate descriptor and forget the callbacks. Writes after this go
 * to the transport. Idempotent. */
static PyObject *
Endpoint_close(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    Endpoint_unbind(self);
    if (self->fd >= 0) {
        int fd = self->fd;
        self->fd = -1;
        if (close(fd) < 0 && errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *
Endpoint_fileno(Endpoint *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->fd);
}

static PyMethodDef Endpoint_methods[] = {
    {"readable", (PyCFunction)Endpoint_readable, METH_NOARGS,
     "Read once and hand the bytes to on_data (the event loop's reader callback)."},
    {"write", (PyCFunction)Endpoint_write, METH_O,
     "Send now if the transport holds nothing, else (and for the rest) through it."},
    {"writelines", (PyCFunction)Endpoint_writelines, METH_O, "write() of the joined chunks."},
    {"bind", (PyCFunction)(void (*)(void))Endpoint_bind, METH_FASTCALL,
     "bind(on_data, on_eof, on_error)."},
    {"close", (PyCFunction)Endpoint_close, METH_NOARGS,
     "Close the duplicate descriptor; later writes go to the transport."},
    {"fileno", (PyCFunction)Endpoint_fileno, METH_NOARGS, "The duplicate descriptor (-1: closed)."},
    {NULL},
};

static PyMemberDef Endpoint_members[] = {
    {"reads", T_PYSSIZET, offsetof(Endpoint, reads), READONLY, "reads made"},
    {"sends", T_PYSSIZET, offsetof(Endpoint, sends), READONLY, "writes sent whole, directly"},
    {"handed", T_PYSSIZET, offsetof(Endpoint, handed), READONLY,
     "writes (or their rest) handed to the transport"},
    {NULL},
};

static PyTypeObject EndpointType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.server._fastio.Endpoint",
    .tp_doc = "Endpoint(fd, transport): direct reads and writes on a duplicate of a "
              "transport's socket (see gateway.server.fastio).",
    .tp_basicsize = sizeof(Endpoint),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Endpoint_new,
    .tp_dealloc = (destructor)Endpoint_dealloc,
    .tp_traverse = (traverseproc)Endpoint_traverse,
    .tp_clear = (inquiry)Endpoint_clear,
    .tp_methods = Endpoint_methods,
    .tp_members = Endpoint_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.server._fastio",
    "Direct socket reads and writes for established plain-TCP sessions.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__fastio(void)
{
    PyObject *m, *empty;
    if (PyType_Ready(&EndpointType) < 0)
        return NULL;
    empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL)
        return NULL;
    empty_join = PyObject_GetAttrString(empty, "join");
    Py_DECREF(empty);
    if (empty_join == NULL)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EndpointType);
    if (PyModule_AddObject(m, "Endpoint", (PyObject *)&EndpointType) < 0) {
        Py_DECREF(&EndpointType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
