/* The gateway's two most frequent chunks, read in C (issue 14's speed): a client chunk of
 * whole simple Query messages, and a server chunk that is the whole rest of a simple
 * query's answer (RowDescription, DataRows, CommandComplete, ..., ReadyForQuery last).
 *
 * Both functions only read the bytes given (every offset checked against the length) and
 * return plain values; whatever they do not recognise exactly, they answer None, and the
 * caller takes the Python path (wire.py, server.py), which stays the reference: a partial
 * or invalid message, any other kind of message the Python path acts on, a count the
 * Python path would read differently. tests/gateway/test_fastwire.py feeds both paths the
 * same generated traffic and compares what they forward and record.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* client_queries(data: bytes) -> list[str] | None
 * The SQL of each Query message when ``data`` is one or more whole Query messages and
 * nothing else (each text as the Python path decodes it: UTF-8 with replacement, without
 * the terminating NUL). */
static PyObject *
client_queries(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "client_queries() takes bytes");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    Py_ssize_t pos = 0;
    /* first pass: whole Query messages only, else None before anything is made */
    Py_ssize_t count = 0;
    while (pos < size) {
        if (size - pos < 5 || data[pos] != 'Q')
            Py_RETURN_NONE;
        uint32_t length = be32(data + pos + 1);
        if (length < 5 || (uint64_t)length > (uint64_t)(size - pos - 1))
            Py_RETURN_NONE; /* no room for the NUL, a bad length, or a partial message */
        pos += 1 + (Py_ssize_t)length;
        count++;
    }
    if (count == 0)
        Py_RETURN_NONE;
    PyObject *texts = PyList_New(count);
    if (texts == NULL)
        return NULL;
    pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t length = (Py_ssize_t)be32(data + pos + 1);
        /* the body less its last byte (the NUL), as body[:-1] */
        PyObject *text = PyUnicode_DecodeUTF8((const char *)data + pos + 5, length - 5, "replace");
        if (text == NULL) {
            Py_DECREF(texts);
            return NULL;
        }
        PyList_SET_ITEM(texts, i, text);
        pos += 1 + length;
    }
    return texts;
}

/* The rows of a CommandComplete tag as wire.command_rows reads them: the last word after a
 * space, ASCII digits only. 1: *rows set; 0: no count (BEGIN, a word); -1: more than 18
 * digits (the Python path reads those, up to 20: the caller falls back). */
static int
tag_rows(const unsigned char *body, Py_ssize_t length, long long *rows)
{
    while (length > 0 && body[length - 1] == '\0')
        length--; /* rstrip(b"\0") */
    Py_ssize_t space = length - 1;
    while (space >= 0 && body[space] != ' ')
        space--;
    if (space < 0)
        return 0; /* no space: the tag is its last word */
    Py_ssize_t digits = length - space - 1;
    if (digits == 0)
        return 0;
    long long value = 0;
    for (Py_ssize_t i = space + 1; i < length; i++) {
        if (body[i] < '0' || body[i] > '9')
            return 0;
    }
    if (digits > 18)
        return -1;
    for (Py_ssize_t i = space + 1; i < length; i++)
        value = value * 10 + (body[i] - '0');
    *rows = value;
    return 1;
}

/* simple_answer(data: bytes) -> tuple[int | None, int, bytes] | None
 * When ``data`` is whole messages ending with the one ReadyForQuery, none of them one the
 * scanner hands over except CommandComplete (its tag not a D... one: DEALLOCATE, DISCARD
 * and DELETE take the Python path) and that ReadyForQuery: (the rows the CommandCompletes
 * count, summed, or None when none counts; the DataRows; ReadyForQuery's status byte). */
static PyObject *
simple_answer(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "simple_answer() takes bytes");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    /* not ending with a whole ReadyForQuery: not such a chunk, told at once (a result's
     * bulk, chunk after chunk, is walked by the Python path alone, not twice) */
    if (size < 6 || data[size - 6] != 'Z' || be32(data + size - 5) != 5)
        Py_RETURN_NONE;
    Py_ssize_t pos = 0;
    long long rows = 0, data_rows = 0;
    int counted = 0;
    while (size - pos >= 5) {
        unsigned char kind = data[pos];
        uint32_t length = be32(data + pos + 1);
        if (length < 4 || (uint64_t)length > (uint64_t)(size - pos - 1))
            Py_RETURN_NONE; /* a bad length, or a partial message */
        const unsigned char *body = data + pos + 5;
        Py_ssize_t body_length = (Py_ssize_t)length - 4;
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        switch (kind) {
        case 'D':
        case 'd':
            data_rows++;
            break;
        case 'C': {
            long long these = 0;
            if (body_length > 0 && body[0] == 'D')
                Py_RETURN_NONE;
            int found = tag_rows(body, body_length, &these);
            if (found < 0)
                Py_RETURN_NONE;
            if (found) {
                if (rows > (1LL << 62) - these)
                    Py_RETURN_NONE;
                rows += these;
                counted = 1;
            }
            break;
        }
        case 'Z':
            if (end != size || body_length != 1)
                Py_RETURN_NONE; /* not the last message, or an odd one */
            {
                PyObject *status = PyBytes_FromStringAndSize((const char *)body, 1);
                if (status == NULL)
                    return NULL;
                if (counted)
                    return Py_BuildValue("(LLN)", rows, data_rows, status);
                return Py_BuildValue("(OLN)", Py_None, data_rows, status);
            }
        /* the other messages the scanner hands over (wire.SCANNED) */
        case 'E': case 'I': case 's': case 'G': case 'H': case 'W': case 'S': case '1':
        case '3':
            Py_RETURN_NONE;
        default:
            break;
        }
        pos = end;
    }
    Py_RETURN_NONE; /* no ReadyForQuery, or bytes after the last whole message */
}

static PyMethodDef methods[] = {
    {"client_queries", client_queries, METH_O, "The SQL of a chunk of whole Query messages."},
    {"simple_answer", simple_answer, METH_O, "The summary of the rest of a simple answer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastwire", "The gateway's frequent chunks, read in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__fastwire(void)
{
    return PyModule_Create(&module);
}
