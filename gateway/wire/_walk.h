/*
 * The message-header walk shared by the C parts: gateway/wire/_speedups.c (scan, the
 * framer's walk) and gateway/session/_trail.c (the session fast path's walks, which also
 * handle some watched messages themselves). The contract is gateway.wire.scan.scan_py's;
 * this file only holds the loop and the result tuple, so that both agree by construction.
 */
#ifndef PGWARDEN_WALK_H
#define PGWARDEN_WALK_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define ACT_PASS 0
#define ACT_WATCH 1
#define ACT_REQUEST 2
#define ACT_READY 3

#define STOP_NONE -1
#define STOP_BAD_LENGTH -2
#define STOP_BAD_READY -3

/* The state of one walk over data[pos:]. */
typedef struct {
    Py_ssize_t pos, end;
    long requests, readies, status;
} Walk;

/*
 * Walk complete messages from w->pos: PASS messages are skipped, REQUEST messages counted,
 * READY messages (ReadyForQuery) counted with their status byte kept. Returns where it
 * stopped: the type of a complete WATCH message (data[w->pos:w->end] is the message),
 * STOP_BAD_LENGTH (w->end = the length), STOP_BAD_READY, or STOP_NONE when fewer than a
 * whole message remains.
 */
static inline long
walk_headers(Walk *w, const unsigned char *p, Py_ssize_t n, const unsigned char *act,
             Py_ssize_t max_size)
{
    Py_ssize_t pos = w->pos;
    long stop = STOP_NONE;
    while (n - pos >= 5) {
        unsigned char t = p[pos];
        Py_ssize_t length = ((Py_ssize_t)p[pos + 1] << 24) | ((Py_ssize_t)p[pos + 2] << 16) |
                            ((Py_ssize_t)p[pos + 3] << 8) | (Py_ssize_t)p[pos + 4];
        unsigned char a;
        if (length < 4 || length > max_size) {
            stop = STOP_BAD_LENGTH;
            w->end = length;
            break;
        }
        w->end = pos + 1 + length;
        a = act[t];
        if (w->end > n)
            break; /* incomplete: the caller streams or buffers it */
        if (a == ACT_PASS) {
            pos = w->end;
        } else if (a == ACT_REQUEST) {
            w->requests++;
            pos = w->end;
        } else if (a == ACT_READY) {
            unsigned char s;
            if (length != 5) {
                stop = STOP_BAD_READY;
                break;
            }
            s = p[pos + 5];
            if (s != 'I' && s != 'T' && s != 'E') {
                stop = STOP_BAD_READY;
                break;
            }
            w->status = s;
            w->readies++;
            pos = w->end;
        } else {
            stop = t;
            break;
        }
    }
    w->pos = pos;
    return stop;
}

/* (pos, stop, end, requests, readies, status), built by hand: Py_BuildValue parses its
 * format string on every call. */
static inline PyObject *
walk_result(const Walk *w, long stop)
{
    PyObject *result = PyTuple_New(6);
    PyObject *items[6];
    int i;
    if (result == NULL)
        return NULL;
    items[0] = PyLong_FromSsize_t(w->pos);
    items[1] = PyLong_FromLong(stop);
    items[2] = PyLong_FromSsize_t(w->end);
    items[3] = PyLong_FromLong(w->requests);
    items[4] = PyLong_FromLong(w->readies);
    items[5] = PyLong_FromLong(w->status);
    for (i = 0; i < 6; i++) {
        if (items[i] == NULL) {
            Py_DECREF(result);
            for (i = i + 1; i < 6; i++)
                Py_XDECREF(items[i]);
            return NULL;
        }
        PyTuple_SET_ITEM(result, i, items[i]);
    }
    return result;
}

/* The four arguments of a walk: (data, pos, actions, max_size). 0 on success, with both
 * buffers held (release them); -1 with an exception. */
static inline int
walk_args(PyObject *const *args, Py_ssize_t nargs, Py_buffer *data, Py_buffer *actions,
          Py_ssize_t *pos, Py_ssize_t *max_size)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan expects 4 arguments");
        return -1;
    }
    *pos = PyLong_AsSsize_t(args[1]);
    if (*pos == -1 && PyErr_Occurred())
        return -1;
    *max_size = PyLong_AsSsize_t(args[3]);
    if (*max_size == -1 && PyErr_Occurred())
        return -1;
    if (PyObject_GetBuffer(args[0], data, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[2], actions, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(data);
        return -1;
    }
    if (actions->len < 256 || *pos < 0) {
        PyBuffer_Release(data);
        PyBuffer_Release(actions);
        PyErr_SetString(PyExc_ValueError, "actions must have 256 entries, pos >= 0");
        return -1;
    }
    return 0;
}

/*
 * A walk implemented in C elsewhere (the session fast path's, gateway/session/_trail.c)
 * that the framer's read step (Forward in _speedups.c) calls directly instead of through
 * its Python method: no argument parsing, buffer requests, result tuple and ints per
 * read. The owner registers its two method functions (so that Forward recognizes a bound
 * method of them as the framer's scan) and the function that does the walk.
 *
 * walk(self, side, data, n, actions, max_size, w, &stop): side 0 = frontend, 1 =
 * backend; walks from w->pos exactly as the method would, 0 on success (stop set), -1
 * with an exception.
 */
typedef int (*cwalk_fn)(PyObject *self, int side, const unsigned char *p, Py_ssize_t n,
                        const unsigned char *act, Py_ssize_t max_size, Walk *w, long *stop);
typedef struct {
    PyCFunction frontend, backend; /* the methods whose bound objects are recognized */
    cwalk_fn walk;
} CWalks;
#define CWALKS_CAPSULE "gateway.wire._speedups.CWalks"

#endif
