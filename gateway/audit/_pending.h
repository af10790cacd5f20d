/*
 * EventBuffer: the encoded events of the batch an AuditWriter is filling, as one
 * comma-separated run of JSON objects in one allocation (gateway/audit/_pending.c).
 *
 * Shared with the session trail (gateway/session/_trail.c), which formats a statement's
 * event straight into it: reserve() an upper bound, write, commit() the end. No object
 * per event, no copy of it until compression reads the run, and the allocation is kept
 * from batch to batch (no fresh pages per seal).
 *
 * A fixed room before the events lets the batch's header members be written just in
 * front of them when the batch is sealed, so the whole payload is one contiguous region
 * that the compressor reads in one pass (EventBuffer.payload).
 */
#ifndef PGWARDEN_AUDIT_PENDING_H
#define PGWARDEN_AUDIT_PENDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject_HEAD
    char *data;            /* room + events + spare */
    Py_ssize_t room;       /* bytes before the events, for the payload's header members */
    Py_ssize_t len;        /* bytes of events (commas included) */
    Py_ssize_t cap;        /* allocated */
    Py_ssize_t count;      /* events */
    Py_ssize_t exports;    /* live buffer exports: no reallocation, no change meanwhile */
    Py_ssize_t view_start; /* what a buffer export covers: the events, or the payload */
    Py_ssize_t view_len;
} EventBuffer;

/* Make room for n more bytes of the events (and a tail after them). 0, or -1 with an
 * exception set. */
static int
eventbuffer_grow(EventBuffer *b, Py_ssize_t n)
{
    Py_ssize_t need, cap;
    char *data;
    if (b->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "EventBuffer: a payload view is still in use");
        return -1;
    }
    if (n > PY_SSIZE_T_MAX - b->room - b->len - 64) {
        PyErr_NoMemory();
        return -1;
    }
    need = b->room + b->len + n + 64;
    if (need <= b->cap)
        return 0;
    cap = b->cap < 65536 ? 65536 : b->cap;
    while (cap < need)
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    data = PyMem_RawRealloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Where to write the next event of at most n bytes (its separating comma is written
 * already), or NULL with an exception set. Finish with eventbuffer_commit. */
static inline char *
eventbuffer_reserve(EventBuffer *b, Py_ssize_t n)
{
    char *w;
    if ((b->exports > 0 || b->room + b->len + n + 64 > b->cap) &&
        eventbuffer_grow(b, n + 1) < 0)
        return NULL;
    w = b->data + b->room + b->len;
    if (b->count > 0)
        *w++ = ',';
    return w;
}

/* The event reserved last ends at end. */
static inline void
eventbuffer_commit(EventBuffer *b, const char *end)
{
    b->len = end - (b->data + b->room);
    b->count++;
    b->view_start = b->room;
    b->view_len = b->len;
}

#endif
