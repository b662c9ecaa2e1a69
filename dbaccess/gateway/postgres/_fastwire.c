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
#include <structmember.h>
#include <time.h>

static uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* The number of Query messages in ``data`` when it is one or more whole Query messages and
 * nothing else (each with room for its NUL), else 0. */
static Py_ssize_t
count_queries(const unsigned char *data, Py_ssize_t size)
{
    Py_ssize_t pos = 0, count = 0;
    while (pos < size) {
        if (size - pos < 5 || data[pos] != 'Q')
            return 0;
        uint32_t length = be32(data + pos + 1);
        if (length < 5 || (uint64_t)length > (uint64_t)(size - pos - 1))
            return 0; /* no room for the NUL, a bad length, or a partial message */
        pos += 1 + (Py_ssize_t)length;
        count++;
    }
    return count;
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
    Py_ssize_t count = count_queries((const unsigned char *)PyBytes_AS_STRING(arg),
                                     PyBytes_GET_SIZE(arg));
    if (count == 0)
        Py_RETURN_NONE;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t pos = 0;
    PyObject *texts = PyList_New(count);
    if (texts == NULL)
        return NULL;
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

/* The rest of a simple answer, read (see simple_answer): 1 when ``data`` is such a chunk,
 * with *counted (whether a CommandComplete counted rows), *rows (their sum), *data_rows and
 * *status (ReadyForQuery's byte) set; 0 when it is not. */
static int
scan_answer(const unsigned char *data, Py_ssize_t size, int *counted, long long *rows,
            long long *data_rows, unsigned char *status)
{
    /* not ending with a whole ReadyForQuery: not such a chunk, told at once (a result's
     * bulk, chunk after chunk, is walked by the Python path alone, not twice) */
    if (size < 6 || data[size - 6] != 'Z' || be32(data + size - 5) != 5)
        return 0;
    Py_ssize_t pos = 0;
    *rows = 0;
    *data_rows = 0;
    *counted = 0;
    while (size - pos >= 5) {
        unsigned char kind = data[pos];
        uint32_t length = be32(data + pos + 1);
        if (length < 4 || (uint64_t)length > (uint64_t)(size - pos - 1))
            return 0; /* a bad length, or a partial message */
        const unsigned char *body = data + pos + 5;
        Py_ssize_t body_length = (Py_ssize_t)length - 4;
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        switch (kind) {
        case 'D':
        case 'd':
            (*data_rows)++;
            break;
        case 'C': {
            long long these = 0;
            if (body_length > 0 && body[0] == 'D')
                return 0;
            int found = tag_rows(body, body_length, &these);
            if (found < 0)
                return 0;
            if (found) {
                if (*rows > (1LL << 62) - these)
                    return 0;
                *rows += these;
                *counted = 1;
            }
            break;
        }
        case 'Z':
            if (end != size || body_length != 1)
                return 0; /* not the last message, or an odd one */
            *status = body[0];
            return 1;
        /* the other messages the scanner hands over (wire.SCANNED) */
        case 'E': case 'I': case 's': case 'G': case 'H': case 'W': case 'S': case '1':
        case '3':
            return 0;
        default:
            break;
        }
        pos = end;
    }
    return 0; /* no ReadyForQuery, or bytes after the last whole message */
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
    int counted;
    long long rows, data_rows;
    unsigned char status;
    if (!scan_answer((const unsigned char *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg),
                     &counted, &rows, &data_rows, &status))
        Py_RETURN_NONE;
    PyObject *status_bytes = PyBytes_FromStringAndSize((const char *)&status, 1);
    if (status_bytes == NULL)
        return NULL;
    if (counted)
        return Py_BuildValue("(LLN)", rows, data_rows, status_bytes);
    return Py_BuildValue("(OLN)", Py_None, data_rows, status_bytes);
}

/* -- Open: a statement whose answer is not complete yet (server.py's _Open) --------------
 * The same fields, as a C struct: the relay below reads and updates them without an
 * attribute lookup each, and the Python path uses it as it used the dataclass. */
typedef struct {
    PyObject_HEAD
    PyObject *kind;
    PyObject *sql;
    PyObject *params;
    char simple;
    long long t0;
    PyObject *rows;
    long long data_rows;
    long long bytes_out;
    long long bytes_in;
    PyObject *sqlstate;
    PyObject *rule;
} OpenObject;

static PyTypeObject OpenType;

static void
open_dealloc(OpenObject *self)
{
    Py_XDECREF(self->kind);
    Py_XDECREF(self->sql);
    Py_XDECREF(self->params);
    Py_XDECREF(self->rows);
    Py_XDECREF(self->sqlstate);
    Py_XDECREF(self->rule);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* a new Open holding (new references to) the values given */
static OpenObject *
open_make(PyObject *kind, PyObject *sql, PyObject *params, int simple, long long t0)
{
    OpenObject *item = PyObject_New(OpenObject, &OpenType);
    if (item == NULL)
        return NULL;
    Py_INCREF(kind);
    Py_INCREF(sql);
    Py_INCREF(params);
    item->kind = kind;
    item->sql = sql;
    item->params = params;
    item->simple = (char)(simple != 0);
    item->t0 = t0;
    item->rows = Py_NewRef(Py_None);
    item->data_rows = item->bytes_out = item->bytes_in = 0;
    item->sqlstate = Py_NewRef(Py_None);
    item->rule = Py_NewRef(Py_None);
    return item;
}

static PyObject *
open_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"kind", "sql", "params", "simple", "t0", "rows", "data_rows",
                            "bytes_out", "bytes_in", "sqlstate", "rule", NULL};
    PyObject *kind, *sql, *params, *rows = Py_None, *sqlstate = Py_None, *rule = Py_None;
    int simple;
    long long t0, data_rows = 0, bytes_out = 0, bytes_in = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOpL|OLLLOO", names, &kind, &sql, &params,
                                     &simple, &t0, &rows, &data_rows, &bytes_out, &bytes_in,
                                     &sqlstate, &rule))
        return NULL;
    OpenObject *item = open_make(kind, sql, params, simple, t0);
    if (item == NULL)
        return NULL;
    Py_SETREF(item->rows, Py_NewRef(rows));
    Py_SETREF(item->sqlstate, Py_NewRef(sqlstate));
    Py_SETREF(item->rule, Py_NewRef(rule));
    item->data_rows = data_rows;
    item->bytes_out = bytes_out;
    item->bytes_in = bytes_in;
    return (PyObject *)item;
}

/* The object fields through getters and setters that refuse ``del``: the relay reads
 * them as never NULL (a member would let ``del item.rows`` leave one NULL). */
static PyObject *
open_get(OpenObject *self, void *offset)
{
    return Py_NewRef(*(PyObject **)((char *)self + (Py_ssize_t)offset));
}

static int
open_set(OpenObject *self, PyObject *value, void *offset)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a statement's fields cannot be deleted");
        return -1;
    }
    Py_SETREF(*(PyObject **)((char *)self + (Py_ssize_t)offset), Py_NewRef(value));
    return 0;
}

#define OPEN_FIELD(name) \
    {#name, (getter)open_get, (setter)open_set, NULL, (void *)offsetof(OpenObject, name)}

static PyGetSetDef open_fields[] = {
    OPEN_FIELD(kind), OPEN_FIELD(sql), OPEN_FIELD(params), OPEN_FIELD(rows),
    OPEN_FIELD(sqlstate), OPEN_FIELD(rule), {NULL},
};

static PyMemberDef open_members[] = {
    {"simple", T_BOOL, offsetof(OpenObject, simple), READONLY, NULL},
    {"t0", T_LONGLONG, offsetof(OpenObject, t0), READONLY, NULL},
    {"data_rows", T_LONGLONG, offsetof(OpenObject, data_rows), 0, NULL},
    {"bytes_out", T_LONGLONG, offsetof(OpenObject, bytes_out), 0, NULL},
    {"bytes_in", T_LONGLONG, offsetof(OpenObject, bytes_in), 0, NULL},
    {NULL},
};

static PyTypeObject OpenType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dbaccess.gateway.postgres._fastwire.Open",
    .tp_basicsize = sizeof(OpenObject),
    .tp_dealloc = (destructor)open_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A statement the client sent whose answer is not complete yet.",
    .tp_members = open_members,
    .tp_getset = open_fields,
    .tp_new = open_new,
};

/* -- Relay: a connection's two data_received, for the chunks the readers above know -----
 * client(data) and server(data) do what Connection.from_client and from_server do on
 * their first path (a chunk of whole Query messages; the whole rest of a simple answer),
 * with the state the Connection holds, and hand every other chunk, or a chunk in any
 * state those paths do not take, to the Python methods themselves. The values a record
 * repeats (the session's names, the connection's number...) are read once, at the start:
 * none of them changes after login. */
typedef struct {
    PyObject_HEAD
    PyObject *conn;
    PyObject *client_side;
    PyObject *upstream_side;
    PyObject *pending;       /* the connection's deque */
    PyObject *scanner;
    PyObject *records;       /* the writer (its backlogged flag) */
    PyObject *add_record;
    PyObject *from_client;   /* the Python path, bound */
    PyObject *from_server;
    PyObject *scan_server;   /* the Python path past its first reading */
    PyObject *lease, *person, *target, *role, *params_policy, *number;
    long long wall_offset;
} RelayObject;

static PyObject *s_idle_timer, *s_buf, *s_guarding, *s_backlogged, *s_skipping, *s_transport,
    *s_write, *s_limiting, *s_portals, *s_skip, *s_header, *s_limited, *s_bytes, *s_rows,
    *s_base, *s_end, *s_status, *s_closed, *s_append, *s_popleft, *s_query, *s_completed,
    *s_refused, *s_session, *s_lease_id, *s_person_name, *s_target, *s_role, *s_params_policy,
    *s_number, *s_wall_offset, *s_add_record, *s_pending, *s_scanner, *s_records, *s_client,
    *s_upstream, *s_from_client, *s_from_server, *s_scan_server;

static int
relay_traverse(RelayObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->conn);
    Py_VISIT(self->client_side);
    Py_VISIT(self->upstream_side);
    Py_VISIT(self->pending);
    Py_VISIT(self->scanner);
    Py_VISIT(self->records);
    Py_VISIT(self->add_record);
    Py_VISIT(self->from_client);
    Py_VISIT(self->from_server);
    Py_VISIT(self->scan_server);
    Py_VISIT(self->lease);
    Py_VISIT(self->person);
    Py_VISIT(self->target);
    Py_VISIT(self->role);
    Py_VISIT(self->params_policy);
    Py_VISIT(self->number);
    return 0;
}

static int
relay_clear(RelayObject *self)
{
    Py_CLEAR(self->conn);
    Py_CLEAR(self->client_side);
    Py_CLEAR(self->upstream_side);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->scanner);
    Py_CLEAR(self->records);
    Py_CLEAR(self->add_record);
    Py_CLEAR(self->from_client);
    Py_CLEAR(self->from_server);
    Py_CLEAR(self->scan_server);
    Py_CLEAR(self->lease);
    Py_CLEAR(self->person);
    Py_CLEAR(self->target);
    Py_CLEAR(self->role);
    Py_CLEAR(self->params_policy);
    Py_CLEAR(self->number);
    return 0;
}

static void
relay_dealloc(RelayObject *self)
{
    PyObject_GC_UnTrack(self);
    relay_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* getattr(obj, name) as a new reference, or NULL with the error set */
#define GET(obj, name) PyObject_GetAttr((obj), (name))

static PyObject *
relay_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *conn;
    if (!PyArg_ParseTuple(args, "O:Relay", &conn))
        return NULL;
    RelayObject *self = (RelayObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->conn = Py_NewRef(conn);
    PyObject *session = NULL, *offset = NULL;
    if ((self->client_side = GET(conn, s_client)) == NULL
        || (self->upstream_side = GET(conn, s_upstream)) == NULL
        || (self->pending = GET(conn, s_pending)) == NULL
        || (self->scanner = GET(conn, s_scanner)) == NULL
        || (self->records = GET(conn, s_records)) == NULL
        || (self->add_record = GET(conn, s_add_record)) == NULL
        || (self->from_client = GET(conn, s_from_client)) == NULL
        || (self->from_server = GET(conn, s_from_server)) == NULL
        || (self->scan_server = GET(conn, s_scan_server)) == NULL
        || (self->params_policy = GET(conn, s_params_policy)) == NULL
        || (self->number = GET(conn, s_number)) == NULL
        || (session = GET(conn, s_session)) == NULL
        || (self->lease = GET(session, s_lease_id)) == NULL
        || (self->person = GET(session, s_person_name)) == NULL
        || (self->target = GET(session, s_target)) == NULL
        || (self->role = GET(session, s_role)) == NULL
        || (offset = GET(conn, s_wall_offset)) == NULL)
        goto fail;
    self->wall_offset = PyLong_AsLongLong(offset);
    if (self->wall_offset == -1 && PyErr_Occurred())
        goto fail;
    if (self->upstream_side == Py_None) {
        PyErr_SetString(PyExc_ValueError, "Relay(): the connection has no upstream yet");
        goto fail;
    }
    Py_DECREF(session);
    Py_DECREF(offset);
    return (PyObject *)self;
fail:
    Py_XDECREF(session);
    Py_XDECREF(offset);
    Py_DECREF(self);
    return NULL;
}

/* 1 true, 0 false, -1 error: the truth of obj.name */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *value = GET(obj, name);
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* 1 when obj.name is None, 0 when not, -1 error */
static int
attr_none(PyObject *obj, PyObject *name)
{
    PyObject *value = GET(obj, name);
    if (value == NULL)
        return -1;
    int none = value == Py_None;
    Py_DECREF(value);
    return none;
}

/* side.transport.write(data) when the side has a transport; 0, or -1 with the error set */
static int
write_to(PyObject *side, PyObject *data)
{
    PyObject *transport = GET(side, s_transport);
    if (transport == NULL)
        return -1;
    if (transport != Py_None) {
        PyObject *done = PyObject_CallMethodOneArg(transport, s_write, data);
        Py_DECREF(transport);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
        return 0;
    }
    Py_DECREF(transport);
    return 0;
}

static long long
monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); /* what time.monotonic_ns reads on Linux */
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Connection.from_client's first path: nothing held back, no statement checks, and a chunk
 * of whole Query messages: one Open each, and the chunk forwarded as it came. */
static PyObject *
relay_client(RelayObject *self, PyObject *data)
{
    if (!PyBytes_Check(data))
        return PyObject_CallOneArg(self->from_client, data);
    int taken = attr_none(self->conn, s_idle_timer);
    if (taken < 0)
        return NULL;
    if (taken) {
        PyObject *buf = GET(self->client_side, s_buf);
        if (buf == NULL)
            return NULL;
        Py_ssize_t held = PyObject_Length(buf);
        Py_DECREF(buf);
        if (held < 0)
            return NULL;
        taken = held == 0;
    }
    int flag;
    if (taken) {
        if ((flag = attr_true(self->conn, s_guarding)) < 0)
            return NULL;
        taken = !flag;
    }
    if (taken) {
        if ((flag = attr_true(self->records, s_backlogged)) < 0)
            return NULL;
        taken = !flag;
    }
    if (taken) {
        if ((flag = attr_true(self->conn, s_skipping)) < 0)
            return NULL;
        taken = !flag;
    }
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t count = taken ? count_queries(bytes, PyBytes_GET_SIZE(data)) : 0;
    if (count == 0)
        return PyObject_CallOneArg(self->from_client, data);
    long long t0 = monotonic_ns();
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t length = (Py_ssize_t)be32(bytes + pos + 1);
        PyObject *sql = PyUnicode_DecodeUTF8((const char *)bytes + pos + 5, length - 5, "replace");
        if (sql == NULL)
            return NULL;
        OpenObject *item = open_make(s_query, sql, Py_None, 1, t0);
        Py_DECREF(sql);
        if (item == NULL)
            return NULL;
        PyObject *done = PyObject_CallMethodOneArg(self->pending, s_append, (PyObject *)item);
        Py_DECREF(item);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
        pos += 1 + length;
    }
    if (write_to(self->upstream_side, data) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* the int obj.name as a long long; -1 with the error set on failure (check PyErr_Occurred) */
static long long
attr_ll(PyObject *obj, PyObject *name)
{
    PyObject *value = GET(obj, name);
    if (value == NULL)
        return -1;
    long long result = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return result;
}

static int
set_ll(PyObject *obj, PyObject *name, long long value)
{
    PyObject *number = PyLong_FromLongLong(value);
    if (number == NULL)
        return -1;
    int failed = PyObject_SetAttr(obj, name, number);
    Py_DECREF(number);
    return failed;
}

/* Connection.from_server's first path: the head statement is a simple one and the chunk is
 * the whole rest of its answer (ServerScanner.whole_answer): its record made, the chunk
 * forwarded as it came. */
static PyObject *
relay_server(RelayObject *self, PyObject *data)
{
    PyObject *conn = self->conn;
    if (!PyBytes_Check(data))
        return PyObject_CallOneArg(self->from_server, data);
    int flag = attr_true(conn, s_limiting);
    if (flag < 0)
        return NULL;
    Py_ssize_t waiting = flag ? 0 : PyObject_Length(self->pending);
    if (waiting < 0)
        return NULL;
    if (waiting == 0)
        return PyObject_CallOneArg(self->from_server, data);
    if ((flag = attr_none(conn, s_idle_timer)) < 0)
        return NULL;
    if (!flag)
        return PyObject_CallOneArg(self->from_server, data);
    PyObject *portals = GET(conn, s_portals);
    if (portals == NULL)
        return NULL;
    Py_ssize_t open_portals = PyObject_Length(portals);
    Py_DECREF(portals);
    if (open_portals != 0)
        return open_portals < 0 ? NULL : PyObject_CallOneArg(self->from_server, data);
    PyObject *first = PySequence_GetItem(self->pending, 0);
    if (first == NULL)
        return NULL;
    if (!Py_IS_TYPE(first, &OpenType) || !((OpenObject *)first)->simple) {
        Py_DECREF(first);
        return PyObject_CallOneArg(self->from_server, data);
    }
    OpenObject *head = (OpenObject *)first; /* a new reference, released below */
    PyObject *scanner = self->scanner, *result = NULL, *header = NULL;
    /* whole_answer's conditions: no message split or limited at the scanner */
    long long skip = attr_ll(scanner, s_skip);
    if (skip == -1 && PyErr_Occurred())
        goto done;
    if ((header = GET(scanner, s_header)) == NULL)
        goto done;
    Py_ssize_t split = PyObject_Length(header);
    if (split < 0)
        goto done;
    if ((flag = attr_true(scanner, s_limited)) < 0)
        goto done;
    int counted = 0;
    long long rows = 0, data_rows = 0;
    unsigned char status = 0;
    if (skip != 0 || split != 0 || flag
        || !scan_answer((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                        &counted, &rows, &data_rows, &status)) {
        result = PyObject_CallOneArg(skip != 0 || split != 0 || flag ? self->from_server
                                                                     : self->scan_server,
                                     data);
        goto done;
    }
    /* the scanner's counts carried from earlier chunks, taken (whole_answer) */
    long long carried_bytes = attr_ll(scanner, s_bytes);
    if (carried_bytes == -1 && PyErr_Occurred())
        goto done;
    long long carried_rows = attr_ll(scanner, s_rows);
    if (carried_rows == -1 && PyErr_Occurred())
        goto done;
    long long base = attr_ll(scanner, s_base);
    if (base == -1 && PyErr_Occurred())
        goto done;
    long long nbytes = carried_bytes + (long long)PyBytes_GET_SIZE(data);
    data_rows += carried_rows;
    if (set_ll(scanner, s_base, base + nbytes) < 0 || set_ll(scanner, s_rows, 0) < 0
        || set_ll(scanner, s_bytes, 0) < 0
        || set_ll(scanner, s_end, (long long)PyBytes_GET_SIZE(data)) < 0)
        goto done;
    head->bytes_out += nbytes;
    head->data_rows += data_rows;
    if (counted) {
        PyObject *these = PyLong_FromLongLong(rows);
        if (these == NULL)
            goto done;
        PyObject *sum = head->rows == Py_None ? Py_NewRef(these) : PyNumber_Add(head->rows, these);
        Py_DECREF(these);
        if (sum == NULL)
            goto done;
        Py_SETREF(head->rows, sum);
    }
    PyObject *status_bytes = PyBytes_FromStringAndSize((const char *)&status, 1);
    if (status_bytes == NULL)
        goto done;
    int failed = PyObject_SetAttr(conn, s_status, status_bytes);
    Py_DECREF(status_bytes);
    if (failed < 0)
        goto done;
    PyObject *popped = PyObject_CallMethodNoArgs(self->pending, s_popleft);
    if (popped == NULL)
        goto done;
    Py_DECREF(popped); /* head, still held here */
    /* Connection._record's tuple, in StatementRecord's field order */
    PyObject *record = Py_BuildValue(
        "(OOOOOOOOLLOLLOOOO)", self->lease, self->person, self->target, self->role, head->kind,
        head->sql, self->params_policy, head->params, head->t0 + self->wall_offset,
        monotonic_ns() - head->t0, head->rows, head->bytes_out, head->bytes_in, head->sqlstate,
        head->rule == Py_None ? s_completed : s_refused, self->number, head->rule);
    if (record == NULL)
        goto done;
    PyObject *added = PyObject_CallOneArg(self->add_record, record);
    Py_DECREF(record);
    if (added == NULL)
        goto done;
    Py_DECREF(added);
    if ((flag = attr_true(conn, s_closed)) < 0)
        goto done;
    if (!flag && write_to(self->client_side, data) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(header);
    Py_DECREF(head);
    return result;
}

static PyMethodDef relay_methods[] = {
    {"client", (PyCFunction)relay_client, METH_O, "The client side's data_received."},
    {"server", (PyCFunction)relay_server, METH_O, "The database side's data_received."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dbaccess.gateway.postgres._fastwire.Relay",
    .tp_basicsize = sizeof(RelayObject),
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A connection's two data_received, for its most frequent chunks.",
    .tp_traverse = (traverseproc)relay_traverse,
    .tp_clear = (inquiry)relay_clear,
    .tp_methods = relay_methods,
    .tp_new = relay_new,
};

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
    if ((s_idle_timer = PyUnicode_InternFromString("idle_timer")) == NULL)
        return NULL;
    if ((s_buf = PyUnicode_InternFromString("buf")) == NULL)
        return NULL;
    if ((s_guarding = PyUnicode_InternFromString("guarding")) == NULL)
        return NULL;
    if ((s_backlogged = PyUnicode_InternFromString("backlogged")) == NULL)
        return NULL;
    if ((s_skipping = PyUnicode_InternFromString("skipping")) == NULL)
        return NULL;
    if ((s_transport = PyUnicode_InternFromString("transport")) == NULL)
        return NULL;
    if ((s_write = PyUnicode_InternFromString("write")) == NULL)
        return NULL;
    if ((s_limiting = PyUnicode_InternFromString("limiting")) == NULL)
        return NULL;
    if ((s_portals = PyUnicode_InternFromString("portals")) == NULL)
        return NULL;
    if ((s_skip = PyUnicode_InternFromString("_skip")) == NULL)
        return NULL;
    if ((s_header = PyUnicode_InternFromString("_header")) == NULL)
        return NULL;
    if ((s_limited = PyUnicode_InternFromString("limited")) == NULL)
        return NULL;
    if ((s_bytes = PyUnicode_InternFromString("_bytes")) == NULL)
        return NULL;
    if ((s_rows = PyUnicode_InternFromString("_rows")) == NULL)
        return NULL;
    if ((s_base = PyUnicode_InternFromString("_base")) == NULL)
        return NULL;
    if ((s_end = PyUnicode_InternFromString("end")) == NULL)
        return NULL;
    if ((s_status = PyUnicode_InternFromString("status")) == NULL)
        return NULL;
    if ((s_closed = PyUnicode_InternFromString("closed")) == NULL)
        return NULL;
    if ((s_append = PyUnicode_InternFromString("append")) == NULL)
        return NULL;
    if ((s_popleft = PyUnicode_InternFromString("popleft")) == NULL)
        return NULL;
    if ((s_query = PyUnicode_InternFromString("query")) == NULL)
        return NULL;
    if ((s_completed = PyUnicode_InternFromString("completed")) == NULL)
        return NULL;
    if ((s_refused = PyUnicode_InternFromString("refused")) == NULL)
        return NULL;
    if ((s_session = PyUnicode_InternFromString("session")) == NULL)
        return NULL;
    if ((s_lease_id = PyUnicode_InternFromString("lease_id")) == NULL)
        return NULL;
    if ((s_person_name = PyUnicode_InternFromString("person")) == NULL)
        return NULL;
    if ((s_target = PyUnicode_InternFromString("target")) == NULL)
        return NULL;
    if ((s_role = PyUnicode_InternFromString("role")) == NULL)
        return NULL;
    if ((s_params_policy = PyUnicode_InternFromString("params_policy")) == NULL)
        return NULL;
    if ((s_number = PyUnicode_InternFromString("number")) == NULL)
        return NULL;
    if ((s_wall_offset = PyUnicode_InternFromString("wall_offset")) == NULL)
        return NULL;
    if ((s_add_record = PyUnicode_InternFromString("add_record")) == NULL)
        return NULL;
    if ((s_pending = PyUnicode_InternFromString("pending")) == NULL)
        return NULL;
    if ((s_scanner = PyUnicode_InternFromString("scanner")) == NULL)
        return NULL;
    if ((s_records = PyUnicode_InternFromString("records")) == NULL)
        return NULL;
    if ((s_client = PyUnicode_InternFromString("client")) == NULL)
        return NULL;
    if ((s_upstream = PyUnicode_InternFromString("upstream")) == NULL)
        return NULL;
    if ((s_from_client = PyUnicode_InternFromString("from_client")) == NULL)
        return NULL;
    if ((s_from_server = PyUnicode_InternFromString("from_server")) == NULL)
        return NULL;
    if ((s_scan_server = PyUnicode_InternFromString("_scan_server")) == NULL)
        return NULL;
    if (PyType_Ready(&OpenType) < 0 || PyType_Ready(&RelayType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "Open", (PyObject *)&OpenType) < 0
        || PyModule_AddObjectRef(mod, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
