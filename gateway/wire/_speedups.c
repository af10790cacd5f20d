/*
 * Optional C implementation of gateway.wire.scan.scan_py: the message-header walk that
 * every byte of a session goes through. Semantics are defined by the pure-Python
 * version in scan.py; tests run both against the same corpus. This file knows nothing
 * else about the protocol.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define ACT_PASS 0
#define ACT_WATCH 1
#define ACT_REQUEST 2
#define ACT_READY 3

#define STOP_NONE -1
#define STOP_BAD_LENGTH -2
#define STOP_BAD_READY -3

/*
 * scan(data, pos, actions, max_size) -> (pos, stop, end, requests, readies, status)
 *
 * Walk complete messages of data[pos:]. PASS messages are skipped, REQUEST messages are
 * counted, READY messages (ReadyForQuery) are counted and their status byte kept. The
 * walk stops at a complete WATCH message (stop = its type, data[pos:end] is the message),
 * at an invalid length (stop = -2, end = the length), at an invalid ReadyForQuery
 * (stop = -3), or when fewer than a whole message remains (stop = -1).
 */
static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, actions;
    Py_ssize_t pos, max_size, n, end = 0;
    long requests = 0, readies = 0, status = -1, stop = STOP_NONE;
    const unsigned char *p, *act;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan expects 4 arguments");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    max_size = PyLong_AsSsize_t(args[3]);
    if (max_size == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &actions, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (actions.len < 256 || pos < 0) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&actions);
        PyErr_SetString(PyExc_ValueError, "actions must have 256 entries, pos >= 0");
        return NULL;
    }
    p = (const unsigned char *)data.buf;
    act = (const unsigned char *)actions.buf;
    n = data.len;

    while (n - pos >= 5) {
        unsigned char t = p[pos];
        Py_ssize_t length = ((Py_ssize_t)p[pos + 1] << 24) | ((Py_ssize_t)p[pos + 2] << 16) |
                            ((Py_ssize_t)p[pos + 3] << 8) | (Py_ssize_t)p[pos + 4];
        unsigned char a;
        if (length < 4 || length > max_size) {
            stop = STOP_BAD_LENGTH;
            end = length;
            break;
        }
        end = pos + 1 + length;
        a = act[t];
        if (end > n)
            break; /* incomplete: the caller streams or buffers it */
        if (a == ACT_PASS) {
            pos = end;
        } else if (a == ACT_REQUEST) {
            requests++;
            pos = end;
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
            status = s;
            readies++;
            pos = end;
        } else {
            stop = t;
            break;
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&actions);
    {
        /* Built by hand: Py_BuildValue parses its format string on every call. */
        PyObject *result = PyTuple_New(6);
        PyObject *items[6];
        int i;
        if (result == NULL)
            return NULL;
        items[0] = PyLong_FromSsize_t(pos);
        items[1] = PyLong_FromLong(stop);
        items[2] = PyLong_FromSsize_t(end);
        items[3] = PyLong_FromLong(requests);
        items[4] = PyLong_FromLong(readies);
        items[5] = PyLong_FromLong(status);
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
