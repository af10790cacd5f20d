/*
 * Optional C implementation of gateway.sql.shape.shape_py: a statement's text with its
 * constants masked, for texts in the safe subset of SQL described in shape.py (None for
 * anything else). Semantics are defined by the Python version; tests check both agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static unsigned char SAFE[256];
static unsigned char IDENT[256];

static void
init_tables(void)
{
    const char *safe =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_ \t\r\n,.()*=<>;+-/%!|:";
    const char *ident = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
    for (const char *p = safe; *p; p++)
        SAFE[(unsigned char)*p] = 1;
    for (const char *p = ident; *p; p++)
        IDENT[(unsigned char)*p] = 1;
}

#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')

static PyObject *
shape(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *s = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    /* Every byte yields at most one, except an empty string (two quotes), which
       becomes three bytes; empty strings cannot be adjacent (a doubled quote is
       refused), so the shape is shorter than 1.5 times the text. */
    unsigned char *out = PyMem_Malloc((size_t)n * 2 + 3);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '\'') {
            if (i > 0 && IDENT[s[i - 1]])
                goto none;
            Py_ssize_t j = i + 1;
            while (j < n && s[j] != '\'') {
                if (!SAFE[s[j]])
                    goto none;
                j++;
            }
            if (j >= n || (j + 1 < n && s[j + 1] == '\''))
                goto none;
            out[o++] = '\'';
            out[o++] = '?';
            out[o++] = '\'';
            i = j + 1;
            continue;
        }
        if (!SAFE[c])
            goto none;
        int nxt = i + 1 < n ? s[i + 1] : -1;
        if ((c == '-' && nxt == '-') || (c == '/' && nxt == '*') || (c == '*' && nxt == '/'))
            goto none;
        if (IS_DIGIT(c) && (i == 0 || (!IDENT[s[i - 1]] && s[i - 1] != '.'))) {
            Py_ssize_t j = i;
            while (j < n && IS_DIGIT(s[j]))
                j++;
            int plain = 1;
            if (j < n && s[j] == '.') {
                if (j + 1 < n && IS_DIGIT(s[j + 1])) {
                    j++;
                    while (j < n && IS_DIGIT(s[j]))
                        j++;
                }
                else {
                    plain = 0;
                }
            }
            if (j < n && (IDENT[s[j]] || s[j] == '.' || s[j] == '\''))
                plain = 0;
            if (plain) {
                out[o++] = '?';
            }
            else {
                memcpy(out + o, s + i, (size_t)(j - i));
                o += j - i;
            }
            i = j;
            continue;
        }
        out[o++] = c;
        i++;
    }
    PyObject *result = PyBytes_FromStringAndSize((const char *)out, o);
    PyMem_Free(out);
    PyBuffer_Release(&view);
    return result;
none:
    PyMem_Free(out);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"shape", shape, METH_O,
     "The text with constants masked, or None; see gateway.sql.shape.shape_py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.sql._shape",
    "C implementation of gateway.sql.shape.shape_py.", -1, methods,
};

PyMODINIT_FUNC
PyInit__shape(void)
{
    init_tables();
    return PyModule_Create(&module);
}
