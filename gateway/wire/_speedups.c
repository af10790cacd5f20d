/*
 * Optional C implementation of gateway.wire.scan.scan_py: the message-header walk that
 * every byte of a session goes through. Semantics are defined by the pure-Python
 * version in scan.py; tests run both against the same corpus. This file knows nothing
 * else about the protocol.
 */
#include "_walk.h"

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

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "Walk message headers; see gateway.wire.scan.scan_py for the contract."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.wire._speedups",
    "C implementation of the framer's header walk.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
