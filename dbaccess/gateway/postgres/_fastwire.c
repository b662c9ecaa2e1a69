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

/* -- State: the attributes the relay reads on every chunk, as C struct members ----------
 * ConnState, ScanState and SideState are the bases of server.Connection, wire.ServerScanner
 * and server._Side: the Python code reads and sets these attributes as before (member
 * descriptors, as a slot's), and the relay reads them from the struct, without an attribute
 * lookup each (those lookups were a third of the relay's time). A member may be NULL (never
 * set, or deleted): the relay then hands the chunk to the Python path. */
typedef struct {
    PyObject_HEAD
    PyObject *idle_timer, *guarding, *skipping, *limiting, *portals, *closed, *status;
} ConnStateObject;

typedef struct {
    PyObject_HEAD
    PyObject *skip, *header, *bytes, *rows, *base, *limited, *end;
} ScanStateObject;

typedef struct {
    PyObject_HEAD
    PyObject *transport, *buf;
} SideStateObject;

/* traverse, clear and dealloc over a state's object members, which follow its head (a
 * Python subclass's own dict and slots are its type's: subtype_traverse visits them, and
 * the type itself, then calls these) */
static void state_dealloc(PyObject *self);

/* the object members a state holds, and how many: those of the C state type it is or
 * derives from (a Python subclass's tp_dealloc is subtype_dealloc; our base's is ours) */
static PyObject **
state_members(PyObject *self, Py_ssize_t *count)
{
    PyTypeObject *type = Py_TYPE(self);
    while (type->tp_dealloc != state_dealloc)
        type = type->tp_base;
    *count = (type->tp_basicsize - (Py_ssize_t)sizeof(PyObject)) / (Py_ssize_t)sizeof(PyObject *);
    return (PyObject **)((char *)self + sizeof(PyObject));
}

static int
state_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_ssize_t count;
    PyObject **members = state_members(self, &count);
    for (Py_ssize_t i = 0; i < count; i++)
        Py_VISIT(members[i]);
    return 0;
}

static int
state_clear(PyObject *self)
{
    Py_ssize_t count;
    PyObject **members = state_members(self, &count);
    for (Py_ssize_t i = 0; i < count; i++)
        Py_CLEAR(members[i]);
    return 0;
}

static void
state_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    state_clear(self);
    Py_TYPE(self)->tp_free(self);
}

#define MEMBER(type, field, name) {name, T_OBJECT_EX, offsetof(type, field), 0, NULL}

static PyMemberDef conn_state_members[] = {
    MEMBER(ConnStateObject, idle_timer, "idle_timer"),
    MEMBER(ConnStateObject, guarding, "guarding"),
    MEMBER(ConnStateObject, skipping, "skipping"),
    MEMBER(ConnStateObject, limiting, "limiting"),
    MEMBER(ConnStateObject, portals, "portals"),
    MEMBER(ConnStateObject, closed, "closed"),
    MEMBER(ConnStateObject, status, "status"),
    {NULL},
};

static PyMemberDef scan_state_members[] = {
    MEMBER(ScanStateObject, skip, "_skip"),
    MEMBER(ScanStateObject, header, "_header"),
    MEMBER(ScanStateObject, bytes, "_bytes"),
    MEMBER(ScanStateObject, rows, "_rows"),
    MEMBER(ScanStateObject, base, "_base"),
    MEMBER(ScanStateObject, limited, "limited"),
    MEMBER(ScanStateObject, end, "end"),
    {NULL},
};

static PyMemberDef side_state_members[] = {
    MEMBER(SideStateObject, transport, "transport"),
    MEMBER(SideStateObject, buf, "buf"),
    {NULL},
};

#define STATE_TYPE(cname, pyname, object, members_, doc) \
    static PyTypeObject cname = { \
        PyVarObject_HEAD_INIT(NULL, 0) \
        .tp_name = "dbaccess.gateway.postgres._fastwire." pyname, \
        .tp_basicsize = sizeof(object), \
        .tp_dealloc = (destructor)state_dealloc, \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, \
        .tp_doc = doc, \
        .tp_traverse = (traverseproc)state_traverse, \
        .tp_clear = (inquiry)state_clear, \
        .tp_members = members_, \
        .tp_new = PyType_GenericNew, \
    }

STATE_TYPE(ConnStateType, "ConnState", ConnStateObject, conn_state_members,
           "server.Connection's attributes the relay reads.");
STATE_TYPE(ScanStateType, "ScanState", ScanStateObject, scan_state_members,
           "wire.ServerScanner's attributes the relay reads and sets.");
STATE_TYPE(SideStateType, "SideState", SideStateObject, side_state_members,
           "server._Side's attributes the relay reads.");

/* -- Relay: a connection's two data_received, for the chunks the readers above know -----
 * client(data) and server(data) do what Connection.from_client and from_server do on
 * their first path (a chunk of whole Query messages; the whole rest of a simple answer),
 * with the state the Connection holds, and hand every other chunk, or a chunk in any
 * state those paths do not take, to the Python methods themselves. The values a record
 * repeats (the session's names, the connection's number...) are read once, at the start:
 * none of them changes after login. */
typedef struct {
    PyObject_HEAD
    ConnStateObject *conn;
    SideStateObject *client_side;
    SideStateObject *upstream_side;
    ScanStateObject *scanner;
    PyObject *pending;       /* the connection's deque, and its bound append and popleft */
    PyObject *append, *popleft;
    PyObject *records;       /* the writer (its backlogged flag), and its __dict__ or NULL */
    PyObject *records_dict;
    PyObject *add_record;
    /* the writer's own add_fields done here (records.BatchingWriter: append to queue while
     * it is shorter than room, else overflow(record)), else NULL: add_record is called */
    PyObject *queue, *queue_append, *overflow;
    PyObject *from_client;   /* the Python path, bound */
    PyObject *from_server;
    PyObject *scan_server;   /* the Python path past its first reading */
    PyObject *lease, *person, *target, *role, *params_policy, *number;
    /* each side's transport when last written to, and its bound write */
    PyObject *client_transport, *client_write, *upstream_transport, *upstream_write;
    long long wall_offset;
} RelayObject;

static PyObject *s_backlogged, *s_write, *s_append, *s_popleft, *s_query, *s_completed,
    *s_refused, *s_session, *s_lease_id, *s_person_name, *s_target, *s_role, *s_params_policy,
    *s_number, *s_wall_offset, *s_add_record, *s_pending, *s_scanner, *s_records, *s_client,
    *s_upstream, *s_from_client, *s_from_server, *s_scan_server, *s_dict, *s_queue,
    *s_overflow, *s_room, *s_add_fields;

/* the Relay's object fields, in order: traverse and clear walk them */
#define RELAY_FIELDS(self) ((PyObject **)&(self)->conn)
#define RELAY_FIELD_COUNT ((offsetof(RelayObject, wall_offset) - offsetof(RelayObject, conn)) / sizeof(PyObject *))
/* Every field from conn up to wall_offset must be an object pointer: a field of another
 * kind among them changes their size, and the build stops here rather than traverse or
 * clear it as an object. */
_Static_assert(
    offsetof(RelayObject, wall_offset) - offsetof(RelayObject, conn) == 26 * sizeof(PyObject *),
    "RelayObject: only object pointers from conn up to wall_offset (26 of them)");

static int
relay_traverse(RelayObject *self, visitproc visit, void *arg)
{
    PyObject **fields = RELAY_FIELDS(self);
    for (size_t i = 0; i < RELAY_FIELD_COUNT; i++)
        Py_VISIT(fields[i]);
    return 0;
}

static int
relay_clear(RelayObject *self)
{
    PyObject **fields = RELAY_FIELDS(self);
    for (size_t i = 0; i < RELAY_FIELD_COUNT; i++)
        Py_CLEAR(fields[i]);
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

/* obj.name as a new reference of the type given, or NULL with TypeError set */
static PyObject *
get_typed(PyObject *obj, PyObject *name, PyTypeObject *type)
{
    PyObject *value = GET(obj, name);
    if (value != NULL && !PyObject_TypeCheck(value, type)) {
        PyErr_Format(PyExc_TypeError, "Relay(): %U is not a %s", name, type->tp_name);
        Py_CLEAR(value);
    }
    return value;
}

/* The writer's add_fields done in C when the connection's add_record is exactly the
 * writer's own add_fields method (not another callable, not a subclass's override) and the
 * writer has the queue, overflow and room it works with: 0 (set up or not), -1 error. */
static int
fast_add(RelayObject *self)
{
    PyObject *add = self->add_record, *own = NULL;
    if (!PyMethod_Check(add) || PyMethod_GET_SELF(add) != self->records || self->records_dict == NULL
        || PyDict_GetItemWithError(self->records_dict, s_room) == NULL)
        return PyErr_Occurred() ? -1 : 0;
    own = PyObject_GetAttr((PyObject *)Py_TYPE(self->records), s_add_fields);
    if (own == NULL) {
        PyErr_Clear();
        return 0;
    }
    int same = own == PyMethod_GET_FUNCTION(add);
    Py_DECREF(own);
    if (!same)
        return 0;
    PyObject *queue = PyObject_GetAttr(self->records, s_queue);
    PyObject *append = queue == NULL ? NULL : PyObject_GetAttr(queue, s_append);
    PyObject *overflow = append == NULL ? NULL : PyObject_GetAttr(self->records, s_overflow);
    if (overflow == NULL) {
        Py_XDECREF(queue);
        Py_XDECREF(append);
        PyErr_Clear();
        return 0;
    }
    self->queue = queue;
    self->queue_append = append;
    self->overflow = overflow;
    return 0;
}

/* the record handed to the writer: add_record(record), or what the writer's add_fields
 * does; 0, or -1 with the error set */
static int
add_record(RelayObject *self, PyObject *record)
{
    if (self->queue_append == NULL) {
        PyObject *added = PyObject_CallOneArg(self->add_record, record);
        Py_XDECREF(added);
        return added == NULL ? -1 : 0;
    }
    Py_ssize_t queued = PyObject_Length(self->queue);
    if (queued < 0)
        return -1;
    /* room as the writer last set it (an int in its __dict__): appended while the queue is
     * shorter, else overflow(record) (which refuses a closed writer before queuing) */
    PyObject *room = PyDict_GetItemWithError(self->records_dict, s_room);
    if (room == NULL && PyErr_Occurred())
        return -1;
    int fits = 0;
    if (room != NULL && PyLong_CheckExact(room)) {
        int big;
        long long limit = PyLong_AsLongLongAndOverflow(room, &big);
        if (limit == -1 && PyErr_Occurred())
            return -1;
        fits = big > 0 || (big == 0 && (long long)queued < limit);
    }
    PyObject *done = PyObject_CallOneArg(fits ? self->queue_append : self->overflow, record);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

static PyObject *
relay_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *conn;
    if (!PyArg_ParseTuple(args, "O:Relay", &conn))
        return NULL;
    if (!PyObject_TypeCheck(conn, &ConnStateType)) {
        PyErr_SetString(PyExc_TypeError, "Relay(): the connection is not a ConnState");
        return NULL;
    }
    RelayObject *self = (RelayObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->conn = (ConnStateObject *)Py_NewRef(conn);
    PyObject *session = NULL, *offset = NULL, *upstream = NULL;
    if ((upstream = GET(conn, s_upstream)) == NULL)
        goto fail;
    if (upstream == Py_None) {
        PyErr_SetString(PyExc_ValueError, "Relay(): the connection has no upstream yet");
        goto fail;
    }
    if (!PyObject_TypeCheck(upstream, &SideStateType)) {
        PyErr_SetString(PyExc_TypeError, "Relay(): upstream is not a SideState");
        goto fail;
    }
    self->upstream_side = (SideStateObject *)Py_NewRef(upstream);
    if ((self->client_side = (SideStateObject *)get_typed(conn, s_client, &SideStateType)) == NULL
        || (self->scanner = (ScanStateObject *)get_typed(conn, s_scanner, &ScanStateType)) == NULL
        || (self->pending = GET(conn, s_pending)) == NULL
        || (self->append = GET(self->pending, s_append)) == NULL
        || (self->popleft = GET(self->pending, s_popleft)) == NULL
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
    /* the writer's flag read from its __dict__ when it has one (a plain attribute there);
     * else, or when the dict lacks it, by getattr */
    PyObject *dict = PyObject_GetAttr(self->records, s_dict);
    if (dict != NULL && PyDict_CheckExact(dict))
        self->records_dict = dict;
    else {
        Py_XDECREF(dict);
        PyErr_Clear();
    }
    if (fast_add(self) < 0)
        goto fail;
    self->wall_offset = PyLong_AsLongLong(offset);
    if (self->wall_offset == -1 && PyErr_Occurred())
        goto fail;
    Py_DECREF(upstream);
    Py_DECREF(session);
    Py_DECREF(offset);
    return (PyObject *)self;
fail:
    Py_XDECREF(upstream);
    Py_XDECREF(session);
    Py_XDECREF(offset);
    Py_DECREF(self);
    return NULL;
}

/* 1 when the writer's backlogged flag is False itself (read from its __dict__ when it has
 * one, a plain attribute there; else by getattr), 0 for anything else: the Python path then
 * reads it (and raises, if reading it does) */
static int
writer_free(RelayObject *self)
{
    PyObject *value = NULL;
    if (self->records_dict != NULL)
        value = Py_XNewRef(PyDict_GetItemWithError(self->records_dict, s_backlogged));
    if (value == NULL && !PyErr_Occurred())
        value = GET(self->records, s_backlogged);
    PyErr_Clear();
    int idle = value == Py_False;
    Py_XDECREF(value);
    return idle;
}

/* side.transport.write(data) when the side has a transport (its bound write kept while the
 * transport stays the same); 0, or -1 with the error set */
static int
write_to(SideStateObject *side, PyObject **kept, PyObject **write, PyObject *data)
{
    PyObject *transport = side->transport;
    if (transport == NULL) {
        PyErr_SetString(PyExc_AttributeError, "transport");
        return -1;
    }
    if (transport == Py_None)
        return 0;
    if (transport != *kept) {
        Py_INCREF(transport); /* held: the getattr may run code that rebinds side.transport */
        PyObject *bound = GET(transport, s_write);
        if (bound == NULL) {
            Py_DECREF(transport);
            return -1;
        }
        Py_XSETREF(*write, bound);
        Py_XSETREF(*kept, transport);
    }
    PyObject *bound = Py_NewRef(*write); /* held: the call may swap the transport */
    PyObject *done = PyObject_CallOneArg(bound, data);
    Py_DECREF(bound);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
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
 * of whole Query messages: one Open each, and the chunk forwarded as it came. Any member
 * not set (NULL) takes the Python path, which raises as it would. */
static PyObject *
relay_client(RelayObject *self, PyObject *data)
{
    ConnStateObject *conn = self->conn;
    PyObject *buf = self->client_side->buf;
    /* the state from_client's first path needs, each flag False itself: anything else
     * (True, another value, never set) is the Python path's to judge */
    if (!PyBytes_Check(data) || conn->idle_timer != Py_None || buf == NULL
        || !PyByteArray_CheckExact(buf) || PyByteArray_GET_SIZE(buf) != 0
        || conn->guarding != Py_False || conn->skipping != Py_False || !writer_free(self))
        return PyObject_CallOneArg(self->from_client, data);
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t count = count_queries(bytes, PyBytes_GET_SIZE(data));
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
        PyObject *done = PyObject_CallOneArg(self->append, (PyObject *)item);
        Py_DECREF(item);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
        pos += 1 + length;
    }
    if (write_to(self->upstream_side, &self->upstream_transport, &self->upstream_write, data) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* an int member as a long long: 0 and *value set, or -1 (not an int, or NULL: the caller
 * takes the Python path, with no error left set) */
static int
member_ll(PyObject *member, long long *value)
{
    if (member == NULL || !PyLong_CheckExact(member))
        return -1;
    int overflow;
    *value = PyLong_AsLongLongAndOverflow(member, &overflow);
    if (overflow || (*value == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* *member = an int of value; 0, or -1 with the error set */
static int
set_member_ll(PyObject **member, long long value)
{
    PyObject *number = PyLong_FromLongLong(value);
    if (number == NULL)
        return -1;
    Py_XSETREF(*member, number);
    return 0;
}

/* Connection.from_server's first path: the head statement is a simple one and the chunk is
 * the whole rest of its answer (ServerScanner.whole_answer): its record made, the chunk
 * forwarded as it came. */
static PyObject *
relay_server(RelayObject *self, PyObject *data)
{
    ConnStateObject *conn = self->conn;
    ScanStateObject *scanner = self->scanner;
    if (!PyBytes_Check(data) || conn->limiting != Py_False || conn->idle_timer != Py_None
        || conn->portals == NULL || !PyDict_CheckExact(conn->portals)
        || PyDict_GET_SIZE(conn->portals) != 0)
        return PyObject_CallOneArg(self->from_server, data);
    Py_ssize_t waiting = PyObject_Length(self->pending);
    if (waiting < 0)
        return NULL;
    if (waiting == 0)
        return PyObject_CallOneArg(self->from_server, data);
    PyObject *first = PySequence_GetItem(self->pending, 0);
    if (first == NULL)
        return NULL;
    if (!Py_IS_TYPE(first, &OpenType) || !((OpenObject *)first)->simple) {
        Py_DECREF(first);
        return PyObject_CallOneArg(self->from_server, data);
    }
    OpenObject *head = (OpenObject *)first; /* a new reference, released below */
    PyObject *result = NULL;
    /* whole_answer's conditions: no message split or limited at the scanner; the
     * scanner's counts carried from earlier chunks, taken (whole_answer) */
    long long skip, carried_bytes, carried_rows, base;
    PyObject *header = scanner->header;
    if (member_ll(scanner->skip, &skip) < 0 || skip != 0 || header == NULL
        || !PyByteArray_CheckExact(header) || PyByteArray_GET_SIZE(header) != 0
        || scanner->limited != Py_False || member_ll(scanner->bytes, &carried_bytes) < 0
        || member_ll(scanner->rows, &carried_rows) < 0 || member_ll(scanner->base, &base) < 0) {
        result = PyObject_CallOneArg(self->from_server, data);
        goto done;
    }
    int counted = 0;
    long long rows = 0, data_rows = 0;
    unsigned char status = 0;
    if (!scan_answer((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                     &counted, &rows, &data_rows, &status)) {
        result = PyObject_CallOneArg(self->scan_server, data);
        goto done;
    }
    long long nbytes = carried_bytes + (long long)PyBytes_GET_SIZE(data);
    data_rows += carried_rows;
    if (set_member_ll(&scanner->base, base + nbytes) < 0 || set_member_ll(&scanner->rows, 0) < 0
        || set_member_ll(&scanner->bytes, 0) < 0
        || set_member_ll(&scanner->end, (long long)PyBytes_GET_SIZE(data)) < 0)
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
    Py_XSETREF(conn->status, status_bytes);
    PyObject *popped = PyObject_CallNoArgs(self->popleft);
    if (popped == NULL)
        goto done;
    Py_DECREF(popped); /* head, still held here */
    /* Connection._record's tuple, in StatementRecord's field order */
    PyObject *started = PyLong_FromLongLong(head->t0 + self->wall_offset);
    PyObject *took = PyLong_FromLongLong(monotonic_ns() - head->t0);
    PyObject *out = PyLong_FromLongLong(head->bytes_out);
    PyObject *in = PyLong_FromLongLong(head->bytes_in);
    PyObject *record = started && took && out && in ? PyTuple_New(17) : NULL;
    if (record == NULL) {
        Py_XDECREF(started);
        Py_XDECREF(took);
        Py_XDECREF(out);
        Py_XDECREF(in);
        goto done;
    }
    PyObject *values[17] = {
        self->lease, self->person, self->target, self->role, head->kind, head->sql,
        self->params_policy, head->params, started, took, head->rows, out, in, head->sqlstate,
        head->rule == Py_None ? s_completed : s_refused, self->number, head->rule,
    };
    /* the four numbers made here are the tuple's (at 8, 9, 11, 12: by place, not by
     * identity, as small ints are shared); the rest shared with their holders */
    for (int i = 0; i < 17; i++)
        PyTuple_SET_ITEM(record, i,
                         i == 8 || i == 9 || i == 11 || i == 12 ? values[i] : Py_NewRef(values[i]));
    int failed = add_record(self, record);
    Py_DECREF(record);
    if (failed < 0)
        goto done;
    int closed = conn->closed == Py_True ? 1
                 : conn->closed == Py_False ? 0
                 : conn->closed == NULL ? -1 : PyObject_IsTrue(conn->closed);
    if (closed < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "closed");
        goto done;
    }
    if (!closed
        && write_to(self->client_side, &self->client_transport, &self->client_write, data) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
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
    if ((s_backlogged = PyUnicode_InternFromString("backlogged")) == NULL)
        return NULL;
    if ((s_write = PyUnicode_InternFromString("write")) == NULL)
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
    if ((s_dict = PyUnicode_InternFromString("__dict__")) == NULL
        || (s_queue = PyUnicode_InternFromString("queue")) == NULL
        || (s_overflow = PyUnicode_InternFromString("overflow")) == NULL
        || (s_room = PyUnicode_InternFromString("room")) == NULL
        || (s_add_fields = PyUnicode_InternFromString("add_fields")) == NULL)
        return NULL;
    if (PyType_Ready(&OpenType) < 0 || PyType_Ready(&RelayType) < 0
        || PyType_Ready(&ConnStateType) < 0 || PyType_Ready(&ScanStateType) < 0
        || PyType_Ready(&SideStateType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "Open", (PyObject *)&OpenType) < 0
        || PyModule_AddObjectRef(mod, "Relay", (PyObject *)&RelayType) < 0
        || PyModule_AddObjectRef(mod, "ConnState", (PyObject *)&ConnStateType) < 0
        || PyModule_AddObjectRef(mod, "ScanState", (PyObject *)&ScanStateType) < 0
        || PyModule_AddObjectRef(mod, "SideState", (PyObject *)&SideStateType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
