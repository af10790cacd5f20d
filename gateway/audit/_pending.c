/*
 * gateway.audit._pending: EventBuffer, the pending events of one AuditWriter batch
 * (layout and the C API the session trail uses: _pending.h; the pure-Python twin and
 * the contract: gateway/audit/pending.py).
 */
#include "_pending.h"
#include <string.h>

/* The default room for the payload's header members: ~300 bytes with a 64-character
 * gateway id; a longer header is sealed without the one-pass path (EventBuffer.payload
 * raises ValueError and the chain compresses in slices). */
#define DEFAULT_ROOM 4096
/* After a batch, an allocation beyond this is given back (a batch of huge statements
 * must not pin its memory for the life of the worker). */
#define KEEP_BYTES (32 * 1024 * 1024)

static PyObject *
EventBuffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"room", NULL};
    Py_ssize_t room = DEFAULT_ROOM;
    EventBuffer *b;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n:EventBuffer", kwlist, &room))
        return NULL;
    if (room < 0 || room > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "room must be between 0 and 1 MiB");
        return NULL;
    }
    b = (EventBuffer *)type->tp_alloc(type, 0);
    if (b == NULL)
        return NULL;
    b->room = room;
    b->view_start = room;
    return (PyObject *)b;
}

static void
EventBuffer_dealloc(EventBuffer *b)
{
    PyMem_RawFree(b->data);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static Py_ssize_t
EventBuffer_length(EventBuffer *b)
{
    return b->count;
}

static PyObject *
EventBuffer_append(EventBuffer *b, PyObject *event)
{
    Py_buffer view;
    char *w;
    if (PyObject_GetBuffer(event, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    w = eventbuffer_reserve(b, view.len);
    if (w != NULL) {
        memcpy(w, view.buf, (size_t)view.len);
        eventbuffer_commit(b, w + view.len);
    }
    PyBuffer_Release(&view);
    if (w == NULL)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
EventBuffer_clear(EventBuffer *b, PyObject *Py_UNUSED(ignored))
{
    if (b->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "EventBuffer: a payload view is still in use");
        return NULL;
    }
    b->len = 0;
    b->count = 0;
    b->view_start = b->room;
    b->view_len = 0;
    if (b->cap > KEEP_BYTES) {
        PyMem_RawFree(b->data);
        b->data = NULL;
        b->cap = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *
EventBuffer_payload(EventBuffer *b, PyObject *args)
{
    Py_buffer head, tail;
    PyObject *view = NULL;
    if (!PyArg_ParseTuple(args, "y*y*:payload", &head, &tail))
        return NULL;
    if (head.len > b->room) {
        PyErr_Format(PyExc_ValueError, "the header (%zd bytes) does not fit the room before "
                     "the events (%zd bytes)", head.len, b->room);
        goto done;
    }
    if (eventbuffer_grow(b, tail.len) < 0)
        goto done;
    memcpy(b->data + b->room - head.len, head.buf, (size_t)head.len);
    memcpy(b->data + b->room + b->len, tail.buf, (size_t)tail.len);
    b->view_start = b->room - head.len;
    b->view_len = head.len + b->len + tail.len;
    view = PyMemoryView_FromObject((PyObject *)b);
    b->view_start = b->room;
    b->view_len = b->len;
done:
    PyBuffer_Release(&head);
    PyBuffer_Release(&tail);
    return view;
}

static PyObject *
EventBuffer_events(EventBuffer *b, PyObject *Py_UNUSED(ignored))
{
    b->view_start = b->room;
    b->view_len = b->len;
    return PyMemoryView_FromObject((PyObject *)b);
}

static PyObject *
EventBuffer_get_nbytes(EventBuffer *b, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(b->len);
}

static int
EventBuffer_getbuffer(EventBuffer *b, Py_buffer *view, int flags)
{
    static char empty[1];
    char *start = b->data == NULL ? empty : b->data + b->view_start;
    if (PyBuffer_FillInfo(view, (PyObject *)b, start, b->view_len, 1, flags) < 0)
        return -1;
    b->exports++;
    return 0;
}

static void
EventBuffer_releasebuffer(EventBuffer *b, Py_buffer *Py_UNUSED(view))
{
    b->exports--;
}

static PyBufferProcs EventBuffer_as_buffer = {
    (getbufferproc)EventBuffer_getbuffer,
    (releasebufferproc)EventBuffer_releasebuffer,
};

static PySequenceMethods EventBuffer_as_sequence = {
    .sq_length = (lenfunc)EventBuffer_length,
};

static PyMethodDef EventBuffer_methods[] = {
    {"append", (PyCFunction)EventBuffer_append, METH_O,
     "Add one encoded event (a JSON object as bytes)."},
    {"clear", (PyCFunction)EventBuffer_clear, METH_NOARGS,
     "Drop every event, keeping the allocation."},
    {"payload", (PyCFunction)EventBuffer_payload, METH_VARARGS,
     "payload(head, tail): a read-only view of head + the events + tail, contiguous."},
    {"events", (PyCFunction)EventBuffer_events, METH_NOARGS,
     "A read-only view of the events, comma-separated."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef EventBuffer_getset[] = {
    {"nbytes", (getter)EventBuffer_get_nbytes, NULL, "bytes of the events, commas included",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EventBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.audit._pending.EventBuffer",
    .tp_basicsize = sizeof(EventBuffer),
    .tp_dealloc = (destructor)EventBuffer_dealloc,
    .tp_as_sequence = &EventBuffer_as_sequence,
    .tp_as_buffer = &EventBuffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The encoded events of the batch being filled (see gateway.audit.pending).",
    .tp_methods = EventBuffer_methods,
    .tp_getset = EventBuffer_getset,
    .tp_new = EventBuffer_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.audit._pending",
    "The pending events of an AuditWriter batch in one buffer.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__pending(void)
{
    PyObject *m;
    if (PyType_Ready(&EventBufferType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "EventBuffer", (PyObject *)&EventBufferType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
