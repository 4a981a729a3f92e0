/* pth.c: PyTorch state_dict files read without Python (see include/ddpm/pth.h).
 *
 * The pickle machine below knows only the opcodes torch.save emits for an
 * OrderedDict of tensors (protocol 2, and 4's FRAME, MEMOIZE and STACK_GLOBAL) and
 * the three globals a state_dict names; everything it builds lives in pools of
 * small values referred to by index, bounded by the input's length. */
#include "ddpm/pth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ddpm/error.h"
#include "ddpm/sha256.h"

/* ---- values of the pickle machine ---------------------------------------- */

enum { PV_NONE, PV_BOOL, PV_INT, PV_STR, PV_TUPLE, PV_LIST, PV_DICT, PV_GLOBAL, PV_STORAGE, PV_TENSOR, PV_MARK };
enum { G_ODICT = 1, G_REBUILD = 2, G_STORAGE = 3 };

typedef struct {
    int kind;
    int64_t i;            /* INT, BOOL; GLOBAL: G_*; STORAGE / TENSOR: index */
    int dtype;            /* GLOBAL G_STORAGE: its element type */
    const uint8_t *s;     /* STR: bytes in the input (not NUL-terminated) */
    uint32_t len;         /* STR length; TUPLE item count */
    uint32_t first;       /* TUPLE: first item in the items pool */
} pv;

typedef struct {
    int owner, key, value; /* a dict entry (key >= 0) or a list element (key -1) */
} pv_entry;

typedef struct {
    char *key;
    ddpm_pth_dtype dtype;
    int64_t n_elements;
    const uint8_t *data; /* resolved from the container after the pickle ran */
} storage;

typedef struct {
    ddpm_pth_tensor pub;
    int storage;
    int64_t offset; /* in elements */
} tensor;

struct ddpm_pth {
    char *name;
    uint8_t *bytes;
    size_t n_bytes;
    char sha256[65];
    storage *storages;
    int n_storages, cap_storages;
    tensor *tensors;
    int n_tensors, cap_tensors;
};

typedef struct {
    ddpm_pth *f;
    pv *vals;
    size_t n_vals, cap_vals;
    int *items;
    size_t n_items, cap_items;
    pv_entry *entries;
    size_t n_entries, cap_entries;
    int *stack;
    size_t n_stack, cap_stack;
    int *memo;
    size_t cap_memo;
} machine;

static const struct {
    const char *name;
    ddpm_pth_dtype dtype;
    int size;
} storage_types[] = {
    {"FloatStorage", DDPM_PTH_F32, 4},  {"DoubleStorage", DDPM_PTH_F64, 8}, {"HalfStorage", DDPM_PTH_F16, 2},
    {"BFloat16Storage", DDPM_PTH_BF16, 2}, {"LongStorage", DDPM_PTH_I64, 8}, {"IntStorage", DDPM_PTH_I32, 4},
    {"ShortStorage", DDPM_PTH_I16, 2},  {"CharStorage", DDPM_PTH_I8, 1},   {"ByteStorage", DDPM_PTH_U8, 1},
    {"BoolStorage", DDPM_PTH_BOOL, 1},
};

static int dtype_size(ddpm_pth_dtype t)
{
    for (size_t i = 0; i < sizeof storage_types / sizeof storage_types[0]; i++)
        if (storage_types[i].dtype == t)
            return storage_types[i].size;
    return 0;
}

/* Grows *p (of *cap elements of size sz) to hold at least need. */
static int grow(void *p, size_t *cap, size_t need, size_t sz)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need) {
        if (n > (SIZE_MAX / 2) / sz)
            return ddpm_error(DDPM_ENOMEM, "out of memory");
        n *= 2;
    }
    void *q = realloc(*(void **)p, n * sz);
    if (!q)
        return ddpm_error(DDPM_ENOMEM, "out of memory reading a state_dict");
    *(void **)p = q;
    *cap = n;
    return 0;
}

#define BAD(...) ddpm_error(DDPM_EFORMAT, __VA_ARGS__)

static int new_val(machine *m, pv v)
{
    if (grow(&m->vals, &m->cap_vals, m->n_vals + 1, sizeof(pv)))
        return -1;
    m->vals[m->n_vals] = v;
    return (int)m->n_vals++;
}

static int push(machine *m, int v)
{
    if (v < 0)
        return DDPM_ENOMEM;
    if (m->n_stack >= (1u << 20))
        return BAD("%s: pickle stack deeper than 2^20", m->f->name);
    if (grow(&m->stack, &m->cap_stack, m->n_stack + 1, sizeof(int)))
        return DDPM_ENOMEM;
    m->stack[m->n_stack++] = v;
    return 0;
}

static int push_val(machine *m, pv v) { return push(m, new_val(m, v)); }

static int top(machine *m, int *v)
{
    if (m->n_stack == 0 || m->vals[m->stack[m->n_stack - 1]].kind == PV_MARK)
        return BAD("%s: pickle stack underflow", m->f->name);
    *v = m->stack[m->n_stack - 1];
    return 0;
}

static int pop(machine *m, int *v)
{
    int rc = top(m, v);
    if (!rc)
        m->n_stack--;
    return rc;
}

/* Position of the topmost MARK on the stack. */
static int find_mark(machine *m, size_t *pos)
{
    for (size_t k = m->n_stack; k-- > 0;)
        if (m->vals[m->stack[k]].kind == PV_MARK) {
            *pos = k;
            return 0;
        }
    return BAD("%s: pickle has no MARK where one is needed", m->f->name);
}

/* Pops stack[from..] into a new tuple and pushes it. */
static int make_tuple(machine *m, size_t from)
{
    size_t n = m->n_stack - from;
    if (grow(&m->items, &m->cap_items, m->n_items + n, sizeof(int)))
        return DDPM_ENOMEM;
    pv t = {.kind = PV_TUPLE, .len = (uint32_t)n, .first = (uint32_t)m->n_items};
    if (n)
        memcpy(m->items + m->n_items, m->stack + from, n * sizeof(int));
    m->n_items += n;
    m->n_stack = from;
    return push_val(m, t);
}

static int add_entry(machine *m, int owner, int key, int value)
{
    if (grow(&m->entries, &m->cap_entries, m->n_entries + 1, sizeof(pv_entry)))
        return DDPM_ENOMEM;
    m->entries[m->n_entries++] = (pv_entry){owner, key, value};
    return 0;
}

static int str_is(const pv *v, const char *s)
{
    return v->kind == PV_STR && v->len == strlen(s) && memcmp(v->s, s, v->len) == 0;
}

static int resolve_global(machine *m, const uint8_t *mod, size_t mod_len, const uint8_t *name, size_t name_len)
{
    pv g = {.kind = PV_GLOBAL};
#define IS(p, n, lit) ((n) == strlen(lit) && memcmp((p), (lit), (n)) == 0)
    if (IS(mod, mod_len, "collections") && IS(name, name_len, "OrderedDict"))
        g.i = G_ODICT;
    else if (IS(mod, mod_len, "torch._utils") && IS(name, name_len, "_rebuild_tensor_v2"))
        g.i = G_REBUILD;
    else if (IS(mod, mod_len, "torch")) {
        for (size_t k = 0; k < sizeof storage_types / sizeof storage_types[0]; k++)
            if (IS(name, name_len, storage_types[k].name)) {
                g.i = G_STORAGE;
                g.dtype = storage_types[k].dtype;
            }
    }
#undef IS
    if (!g.i)
        return BAD("%s: the pickle names '%.*s.%.*s', which a state_dict of tensors does not", m->f->name,
                   (int)(mod_len > 64 ? 64 : mod_len), (const char *)mod, (int)(name_len > 64 ? 64 : name_len),
                   (const char *)name);
    return push_val(m, g);
}

/* ('storage', <Type>Storage, key, location, n_elements[, None]) -> a storage. */
static int persistent_load(machine *m, int pid)
{
    const pv *t = &m->vals[pid];
    if (t->kind != PV_TUPLE || (t->len != 5 && t->len != 6))
        return BAD("%s: a persistent id is not a storage tuple", m->f->name);
    const pv *tag = &m->vals[m->items[t->first]], *type = &m->vals[m->items[t->first + 1]];
    const pv *key = &m->vals[m->items[t->first + 2]], *loc = &m->vals[m->items[t->first + 3]];
    const pv *num = &m->vals[m->items[t->first + 4]];
    if (!str_is(tag, "storage") || type->kind != PV_GLOBAL || type->i != G_STORAGE || key->kind != PV_STR ||
        loc->kind != PV_STR || num->kind != PV_INT || num->i < 0 ||
        (t->len == 6 && m->vals[m->items[t->first + 5]].kind != PV_NONE))
        return BAD("%s: a persistent id is not a storage tuple", m->f->name);
    if (key->len == 0 || key->len > 256 || memchr(key->s, 0, key->len) || memchr(key->s, '/', key->len))
        return BAD("%s: a storage key is empty, too long or holds '/' or NUL", m->f->name);
    ddpm_pth *f = m->f;
    int index = -1;
    for (int k = 0; k < f->n_storages; k++)
        if (strlen(f->storages[k].key) == key->len && !memcmp(f->storages[k].key, key->s, key->len))
            index = k;
    if (index >= 0) {
        if (f->storages[index].dtype != (ddpm_pth_dtype)type->dtype || f->storages[index].n_elements != num->i)
            return BAD("%s: storage '%s' is named twice with different types or sizes", f->name,
                       f->storages[index].key);
    } else {
        size_t cap = (size_t)f->cap_storages;
        if (grow(&f->storages, &cap, (size_t)f->n_storages + 1, sizeof(storage)))
            return DDPM_ENOMEM;
        f->cap_storages = (int)cap;
        char *k = malloc(key->len + 1);
        if (!k)
            return ddpm_error(DDPM_ENOMEM, "out of memory");
        memcpy(k, key->s, key->len);
        k[key->len] = 0;
        index = f->n_storages++;
        f->storages[index] = (storage){k, (ddpm_pth_dtype)type->dtype, num->i, NULL};
    }
    return push_val(m, (pv){.kind = PV_STORAGE, .i = index});
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]). */
static int rebuild_tensor(machine *m, const pv *args)
{
    ddpm_pth *f = m->f;
    if (args->kind != PV_TUPLE || (args->len != 6 && args->len != 7))
        return BAD("%s: _rebuild_tensor_v2 called with %u arguments", f->name, args->len);
    const pv *st = &m->vals[m->items[args->first]], *off = &m->vals[m->items[args->first + 1]];
    const pv *size = &m->vals[m->items[args->first + 2]], *stride = &m->vals[m->items[args->first + 3]];
    const pv *grad = &m->vals[m->items[args->first + 4]], *hooks = &m->vals[m->items[args->first + 5]];
    if (st->kind != PV_STORAGE || off->kind != PV_INT || off->i < 0 || size->kind != PV_TUPLE ||
        stride->kind != PV_TUPLE || size->len != stride->len || grad->kind != PV_BOOL || hooks->kind != PV_DICT)
        return BAD("%s: _rebuild_tensor_v2 called with arguments that are not a tensor's", f->name);
    if (args->len == 7) {
        int meta = m->vals[m->items[args->first + 6]].kind;
        if (meta != PV_NONE && meta != PV_DICT)
            return BAD("%s: _rebuild_tensor_v2 called with arguments that are not a tensor's", f->name);
    }
    if (size->len > DDPM_PTH_MAX_DIMS)
        return BAD("%s: a tensor has %u dimensions (at most %d)", f->name, size->len, DDPM_PTH_MAX_DIMS);
    tensor t = {.storage = (int)st->i, .offset = off->i};
    t.pub.dtype = f->storages[st->i].dtype;
    t.pub.ndim = (int)size->len;
    int64_t n = 1, expect_stride = 1;
    for (int d = (int)size->len - 1; d >= 0; d--) {
        const pv *sz = &m->vals[m->items[size->first + d]], *sd = &m->vals[m->items[stride->first + d]];
        if (sz->kind != PV_INT || sd->kind != PV_INT || sz->i < 0 || sz->i > ((int64_t)1 << 40))
            return BAD("%s: a tensor's size or stride is not a small non-negative int", f->name);
        if (sz->i > 1 && sd->i != expect_stride)
            return BAD("%s: a tensor is not contiguous (stride %lld where %lld is row-major)", f->name,
                       (long long)sd->i, (long long)expect_stride);
        t.pub.shape[d] = sz->i;
        if (sz->i && n > ((int64_t)1 << 62) / sz->i)
            return BAD("%s: a tensor's size overflows", f->name);
        n *= sz->i;
        expect_stride = n ? n : 1;
    }
    t.pub.n_elements = n;
    const storage *s = &f->storages[st->i];
    if (t.offset > s->n_elements || n > s->n_elements - t.offset)
        return BAD("%s: a tensor of %lld elements at offset %lld runs past its storage '%s' of %lld", f->name,
                   (long long)n, (long long)t.offset, s->key, (long long)s->n_elements);
    size_t cap = (size_t)f->cap_tensors;
    if (grow(&f->tensors, &cap, (size_t)f->n_tensors + 1, sizeof(tensor)))
        return DDPM_ENOMEM;
    f->cap_tensors = (int)cap;
    f->tensors[f->n_tensors] = t;
    return push_val(m, (pv){.kind = PV_TENSOR, .i = f->n_tensors++});
}

static int reduce(machine *m)
{
    int args = 0, fn = 0;
    int rc = pop(m, &args);
    if (!rc)
        rc = pop(m, &fn);
    if (rc)
        return rc;
    const pv *g = &m->vals[fn], *a = &m->vals[args];
    if (g->kind == PV_GLOBAL && g->i == G_ODICT && a->kind == PV_TUPLE && a->len == 0)
        return push_val(m, (pv){.kind = PV_DICT});
    if (g->kind == PV_GLOBAL && g->i == G_REBUILD)
        return rebuild_tensor(m, a);
    return BAD("%s: the pickle calls something other than OrderedDict() or _rebuild_tensor_v2", m->f->name);
}

static int need(const uint8_t *p, const uint8_t *end, size_t n, machine *m)
{
    if ((size_t)(end - p) < n)
        return BAD("%s: pickle truncated", m->f->name);
    return 0;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; k--)
        v = v << 8 | p[k];
    return v;
}

static int memo_put(machine *m, uint64_t index)
{
    int v = 0;
    int rc = top(m, &v);
    if (rc)
        return rc;
    if (index > m->n_vals + 16 || index >= (1u << 24))
        return BAD("%s: pickle memo index %llu out of range", m->f->name, (unsigned long long)index);
    size_t old = m->cap_memo;
    if (grow(&m->memo, &m->cap_memo, (size_t)index + 1, sizeof(int)))
        return DDPM_ENOMEM;
    for (size_t k = old; k < m->cap_memo; k++)
        m->memo[k] = -1;
    m->memo[index] = v;
    return 0;
}

static int memo_get(machine *m, uint64_t index)
{
    if (index >= m->cap_memo || m->memo[index] < 0)
        return BAD("%s: pickle reads memo entry %llu, which was never stored", m->f->name,
                   (unsigned long long)index);
    return push(m, m->memo[index]);
}

/* Runs one pickle from p; *result is the value STOP left, *used the bytes read. */
static int run_pickle(machine *m, const uint8_t *p, const uint8_t *end, int *result, size_t *used)
{
    const uint8_t *start = p;
    m->n_stack = 0;
    for (size_t k = 0; k < m->cap_memo; k++)
        m->memo[k] = -1;
    int rc = 0;
    for (;;) {
        if ((rc = need(p, end, 1, m)))
            return rc;
        uint8_t op = *p++;
        uint64_t n = 0;
        size_t mark = 0;
        int a = 0, b = 0, c = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if ((rc = need(p, end, 1, m)))
                return rc;
            if (*p < 2 || *p > 5)
                return BAD("%s: pickle protocol %d (2 to 5 are read)", m->f->name, *p);
            p++;
            break;
        case 0x95: /* FRAME: a length hint only */
            if ((rc = need(p, end, 8, m)))
                return rc;
            p += 8;
            break;
        case '.': /* STOP */
            if ((rc = pop(m, result)))
                return rc;
            *used = (size_t)(p - start);
            return 0;
        case 'c': { /* GLOBAL module\nname\n */
            const uint8_t *nl1 = memchr(p, '\n', (size_t)(end - p));
            const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
            if (!nl2)
                return BAD("%s: pickle truncated in GLOBAL", m->f->name);
            rc = resolve_global(m, p, (size_t)(nl1 - p), nl1 + 1, (size_t)(nl2 - nl1 - 1));
            p = nl2 + 1;
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if ((rc = pop(m, &b)) || (rc = pop(m, &a)))
                return rc;
            if (m->vals[a].kind != PV_STR || m->vals[b].kind != PV_STR)
                return BAD("%s: STACK_GLOBAL of non-strings", m->f->name);
            rc = resolve_global(m, m->vals[a].s, m->vals[a].len, m->vals[b].s, m->vals[b].len);
            break;
        case 'q': /* BINPUT */
        case 'r': /* LONG_BINPUT */
            n = op == 'q' ? 1 : 4;
            if ((rc = need(p, end, n, m)))
                return rc;
            rc = memo_put(m, le(p, (int)n));
            p += n;
            break;
        case 0x94: /* MEMOIZE */
        {
            size_t used_slots = 0;
            for (size_t k = 0; k < m->cap_memo; k++)
                if (m->memo[k] >= 0)
                    used_slots = k + 1;
            rc = memo_put(m, used_slots);
            break;
        }
        case 'h': /* BINGET */
        case 'j': /* LONG_BINGET */
            n = op == 'h' ? 1 : 4;
            if ((rc = need(p, end, n, m)))
                return rc;
            rc = memo_get(m, le(p, (int)n));
            p += n;
            break;
        case '(': /* MARK */
            rc = push_val(m, (pv){.kind = PV_MARK});
            break;
        case ')': /* EMPTY_TUPLE */
            rc = make_tuple(m, m->n_stack);
            break;
        case 't': /* TUPLE */
            if ((rc = find_mark(m, &mark)))
                return rc;
            rc = make_tuple(m, mark + 1);
            if (!rc) { /* drop the MARK below the new tuple */
                m->stack[mark] = m->stack[mark + 1];
                m->n_stack = mark + 1;
            }
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
            n = (uint64_t)(op - 0x84);
            if (m->n_stack < n)
                return BAD("%s: pickle stack underflow", m->f->name);
            for (size_t k = m->n_stack - n; k < m->n_stack; k++)
                if (m->vals[m->stack[k]].kind == PV_MARK)
                    return BAD("%s: pickle stack underflow", m->f->name);
            rc = make_tuple(m, m->n_stack - n);
            break;
        case '}': /* EMPTY_DICT */
            rc = push_val(m, (pv){.kind = PV_DICT});
            break;
        case ']': /* EMPTY_LIST */
            rc = push_val(m, (pv){.kind = PV_LIST});
            break;
        case 's': /* SETITEM */
            if ((rc = pop(m, &c)) || (rc = pop(m, &b)) || (rc = top(m, &a)))
                return rc;
            if (m->vals[a].kind != PV_DICT)
                return BAD("%s: SETITEM on something that is not a dict", m->f->name);
            rc = add_entry(m, a, b, c);
            break;
        case 'u': /* SETITEMS */
        case 'e': /* APPENDS */
            if ((rc = find_mark(m, &mark)))
                return rc;
            if (mark == 0)
                return BAD("%s: pickle stack underflow", m->f->name);
            a = m->stack[mark - 1];
            if (m->vals[a].kind != (op == 'u' ? PV_DICT : PV_LIST) || (op == 'u' && (m->n_stack - mark - 1) % 2))
                return BAD("%s: %s on something that is not a %s", m->f->name, op == 'u' ? "SETITEMS" : "APPENDS",
                           op == 'u' ? "dict" : "list");
            for (size_t k = mark + 1; k < m->n_stack && !rc; k += op == 'u' ? 2 : 1)
                rc = add_entry(m, a, op == 'u' ? m->stack[k] : -1, op == 'u' ? m->stack[k + 1] : m->stack[k]);
            m->n_stack = mark;
            break;
        case 'a': /* APPEND */
            if ((rc = pop(m, &b)) || (rc = top(m, &a)))
                return rc;
            if (m->vals[a].kind != PV_LIST)
                return BAD("%s: APPEND on something that is not a list", m->f->name);
            rc = add_entry(m, a, -1, b);
            break;
        case 'R': /* REDUCE */
            rc = reduce(m);
            break;
        case 'b': /* BUILD: only an OrderedDict's attributes (its _metadata), ignored */
            if ((rc = pop(m, &b)) || (rc = top(m, &a)))
                return rc;
            if (m->vals[a].kind != PV_DICT)
                return BAD("%s: BUILD on something that is not an OrderedDict", m->f->name);
            break;
        case 'Q': /* BINPERSID */
            if ((rc = pop(m, &a)))
                return rc;
            rc = persistent_load(m, a);
            break;
        case 'J': /* BININT */
            if ((rc = need(p, end, 4, m)))
                return rc;
            rc = push_val(m, (pv){.kind = PV_INT, .i = (int32_t)(uint32_t)le(p, 4)});
            p += 4;
            break;
        case 'K': /* BININT1 */
        case 'M': /* BININT2 */
            n = op == 'K' ? 1 : 2;
            if ((rc = need(p, end, n, m)))
                return rc;
            rc = push_val(m, (pv){.kind = PV_INT, .i = (int64_t)le(p, (int)n)});
            p += n;
            break;
        case 0x8a: /* LONG1: up to 8 bytes, two's complement */
            if ((rc = need(p, end, 1, m)))
                return rc;
            n = *p++;
            if (n > 8 || (rc = need(p, end, n, m)))
                return rc ? rc : BAD("%s: an integer of %llu bytes", m->f->name, (unsigned long long)n);
            {
                uint64_t u = n ? le(p, (int)n) : 0;
                if (n && n < 8 && (p[n - 1] & 0x80))
                    u |= ~(uint64_t)0 << (8 * n);
                rc = push_val(m, (pv){.kind = PV_INT, .i = (int64_t)u});
            }
            p += n;
            break;
        case 'X':  /* BINUNICODE */
        case 0x8c: /* SHORT_BINUNICODE */
        case 0x8d: /* BINUNICODE8 */
            n = op == 'X' ? 4 : op == 0x8c ? 1 : 8;
            if ((rc = need(p, end, n, m)))
                return rc;
            {
                uint64_t len = le(p, (int)n);
                p += n;
                if (len > (uint64_t)(end - p) || len > UINT32_MAX)
                    return BAD("%s: pickle truncated in a string", m->f->name);
                rc = push_val(m, (pv){.kind = PV_STR, .s = p, .len = (uint32_t)len});
                p += len;
            }
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            rc = push_val(m, (pv){.kind = PV_BOOL, .i = op == 0x88});
            break;
        case 'N': /* NONE */
            rc = push_val(m, (pv){.kind = PV_NONE});
            break;
        default:
            return BAD("%s: pickle opcode 0x%02x at byte %zu is not one a state_dict uses", m->f->name, op,
                       (size_t)(p - 1 - start));
        }
        if (rc)
            return rc;
    }
}

/* Names the tensors from the OrderedDict the pickle returned. */
static int take_state_dict(machine *m, int root)
{
    ddpm_pth *f = m->f;
    if (m->vals[root].kind != PV_DICT)
        return BAD("%s: the pickle is not a state_dict (an OrderedDict of tensors)", f->name);
    int named = 0;
    for (size_t k = 0; k < m->n_entries; k++) {
        const pv_entry *e = &m->entries[k];
        if (e->owner != root)
            continue;
        const pv *key = &m->vals[e->key], *val = &m->vals[e->value];
        if (key->kind != PV_STR || val->kind != PV_TENSOR)
            return BAD("%s: the state_dict maps something other than a name to a tensor", f->name);
        if (key->len == 0 || key->len > 1024 || memchr(key->s, 0, key->len))
            return BAD("%s: a tensor name is empty, longer than 1024 bytes or holds NUL", f->name);
        tensor *t = &f->tensors[val->i];
        if (t->pub.name)
            return BAD("%s: one tensor is stored under two names", f->name);
        for (int j = 0; j < f->n_tensors; j++)
            if (f->tensors[j].pub.name && strlen(f->tensors[j].pub.name) == key->len &&
                !memcmp(f->tensors[j].pub.name, key->s, key->len))
                return BAD("%s: tensor '%s' appears twice", f->name, f->tensors[j].pub.name);
        char *name = malloc(key->len + 1);
        if (!name)
            return ddpm_error(DDPM_ENOMEM, "out of memory");
        memcpy(name, key->s, key->len);
        name[key->len] = 0;
        t->pub.name = name;
        named++;
    }
    if (named != f->n_tensors)
        return BAD("%s: the pickle builds tensors that are not in the state_dict", f->name);
    return 0;
}

static int check_storage_bytes(ddpm_pth *f, storage *s, const uint8_t *data, uint64_t n_bytes)
{
    uint64_t want = (uint64_t)s->n_elements * (uint64_t)dtype_size(s->dtype);
    if (s->n_elements > ((int64_t)1 << 56) || n_bytes != want)
        return BAD("%s: storage '%s' holds %llu bytes where its %lld elements need %llu", f->name, s->key,
                   (unsigned long long)n_bytes, (long long)s->n_elements, (unsigned long long)want);
    s->data = data;
    return 0;
}

/* ---- the zip container ---------------------------------------------------- */

typedef struct {
    const uint8_t *name;
    size_t name_len;
    const uint8_t *data;
    uint64_t size;
} zip_entry;

static uint64_t rd(const uint8_t *p, int n) { return le(p, n); }

/* The central directory's entries (stored, CRC-checked) into *out. */
static int zip_entries(ddpm_pth *f, zip_entry **out, size_t *n_out)
{
    const uint8_t *b = f->bytes;
    size_t n = f->n_bytes;
    *out = NULL;
    *n_out = 0;
    if (n < 22)
        return BAD("%s: zip archive too short", f->name);
    size_t eocd = SIZE_MAX;
    for (size_t k = n - 22 + 1; k-- > 0 && n - k <= 22 + 65535;)
        if (rd(b + k, 4) == 0x06054b50) {
            eocd = k;
            break;
        }
    if (eocd == SIZE_MAX)
        return BAD("%s: zip archive without an end of central directory", f->name);
    uint64_t count = rd(b + eocd + 10, 2), cd_size = rd(b + eocd + 12, 4), cd_off = rd(b + eocd + 16, 4);
    if ((count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_off == 0xFFFFFFFF) && eocd >= 20 &&
        rd(b + eocd - 20, 4) == 0x07064b50) { /* zip64 locator -> zip64 end record */
        uint64_t z = rd(b + eocd - 20 + 8, 8);
        if (z > n || n - z < 56 || rd(b + z, 4) != 0x06064b50)
            return BAD("%s: zip64 end record out of place", f->name);
        count = rd(b + z + 32, 8);
        cd_size = rd(b + z + 40, 8);
        cd_off = rd(b + z + 48, 8);
    }
    if (cd_off > n || cd_size > n - cd_off || count > cd_size / 46)
        return BAD("%s: zip central directory out of bounds", f->name);
    zip_entry *e = calloc(count ? count : 1, sizeof *e);
    if (!e)
        return ddpm_error(DDPM_ENOMEM, "out of memory");
    const uint8_t *p = b + cd_off, *end = b + cd_off + cd_size;
    int rc = 0;
    for (uint64_t i = 0; i < count && !rc; i++) {
        if (end - p < 46 || rd(p, 4) != 0x02014b50) {
            rc = BAD("%s: zip central directory entry %llu is damaged", f->name, (unsigned long long)i);
            break;
        }
        uint64_t method = rd(p + 10, 2), crc = rd(p + 16, 4), csize = rd(p + 20, 4), usize = rd(p + 24, 4);
        uint64_t nlen = rd(p + 28, 2), xlen = rd(p + 30, 2), clen = rd(p + 32, 2), loff = rd(p + 42, 4);
        if ((uint64_t)(end - p) - 46 < nlen + xlen + clen) {
            rc = BAD("%s: zip central directory entry %llu is damaged", f->name, (unsigned long long)i);
            break;
        }
        const uint8_t *x = p + 46 + nlen, *xend = x + xlen;
        while (xend - x >= 4) { /* zip64 extra field: the 0xFFFFFFFF values in order */
            uint64_t id = rd(x, 2), len = rd(x + 2, 2);
            if ((uint64_t)(xend - x - 4) < len)
                break;
            if (id == 1) {
                const uint8_t *q = x + 4, *qend = x + 4 + len;
                if (usize == 0xFFFFFFFF && qend - q >= 8) usize = rd(q, 8), q += 8;
                if (csize == 0xFFFFFFFF && qend - q >= 8) csize = rd(q, 8), q += 8;
                if (loff == 0xFFFFFFFF && qend - q >= 8) loff = rd(q, 8), q += 8;
            }
            x += 4 + len;
        }
        if (method != 0 || csize != usize) {
            rc = BAD("%s: zip entry '%.*s' is compressed (torch.save stores entries uncompressed)", f->name,
                     (int)(nlen > 200 ? 200 : nlen), (const char *)p + 46);
            break;
        }
        if (loff > n || n - loff < 30 || rd(b + loff, 4) != 0x04034b50) {
            rc = BAD("%s: zip entry '%.*s' has no local header", f->name, (int)(nlen > 200 ? 200 : nlen),
                     (const char *)p + 46);
            break;
        }
        uint64_t data_off = loff + 30 + rd(b + loff + 26, 2) + rd(b + loff + 28, 2);
        if (data_off > n || usize > n - data_off) {
            rc = BAD("%s: zip entry '%.*s' runs past the end of the file", f->name,
                     (int)(nlen > 200 ? 200 : nlen), (const char *)p + 46);
            break;
        }
        /* CRC-32 in pieces of at most 1 GiB (zlib's length is a uInt). */
        uLong got = crc32(0L, Z_NULL, 0);
        for (uint64_t o = 0; o < usize; o += (1u << 30)) {
            uint64_t len = usize - o < (1u << 30) ? usize - o : (1u << 30);
            got = crc32(got, b + data_off + o, (uInt)len);
        }
        if (got != crc) {
            rc = BAD("%s: zip entry '%.*s' fails its CRC-32 (the file is damaged)", f->name,
                     (int)(nlen > 200 ? 200 : nlen), (const char *)p + 46);
            break;
        }
        e[i] = (zip_entry){p + 46, nlen, b + data_off, usize};
        p += 46 + nlen + xlen + clen;
    }
    if (rc) {
        free(e);
        return rc;
    }
    *out = e;
    *n_out = count;
    return 0;
}

static const zip_entry *zip_find(const zip_entry *e, size_t n, const uint8_t *prefix, size_t prefix_len,
                                 const char *rest)
{
    size_t rest_len = strlen(rest);
    for (size_t k = 0; k < n; k++)
        if (e[k].name_len == prefix_len + rest_len && !memcmp(e[k].name, prefix, prefix_len) &&
            !memcmp(e[k].name + prefix_len, rest, rest_len))
            return &e[k];
    return NULL;
}

static int open_zip(ddpm_pth *f, machine *m)
{
    zip_entry *e;
    size_t n;
    int rc = zip_entries(f, &e, &n);
    if (rc)
        return rc;
    const zip_entry *pkl = NULL;
    for (size_t k = 0; k < n; k++) {
        static const char tail[] = "/data.pkl";
        size_t tl = sizeof tail - 1;
        if (e[k].name_len > tl && !memcmp(e[k].name + e[k].name_len - tl, tail, tl) &&
            !memchr(e[k].name, '/', e[k].name_len - tl)) {
            if (pkl) {
                free(e);
                return BAD("%s: zip archive holds two data.pkl", f->name);
            }
            pkl = &e[k];
        }
    }
    if (!pkl) {
        free(e);
        return BAD("%s: zip archive without <name>/data.pkl: not a torch.save file", f->name);
    }
    int root = 0;
    size_t used = 0;
    rc = run_pickle(m, pkl->data, pkl->data + pkl->size, &root, &used);
    if (!rc && used != pkl->size)
        rc = BAD("%s: data.pkl continues after its STOP", f->name);
    if (!rc)
        rc = take_state_dict(m, root);
    size_t prefix_len = pkl->name_len - strlen("/data.pkl");
    for (int s = 0; s < f->n_storages && !rc; s++) {
        char rest[300];
        snprintf(rest, sizeof rest, "/data/%s", f->storages[s].key);
        const zip_entry *d = zip_find(e, n, pkl->name, prefix_len, rest);
        if (!d)
            rc = BAD("%s: storage '%s' is missing from the archive", f->name, f->storages[s].key);
        else
            rc = check_storage_bytes(f, &f->storages[s], d->data, d->size);
    }
    free(e);
    return rc;
}

/* ---- the legacy stream ----------------------------------------------------- */

static int open_legacy(ddpm_pth *f, machine *m)
{
    /* Pickle 1: the magic number 0x1950a86a20f9469cfc6c as LONG1 of 10 bytes. */
    static const uint8_t magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                    0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};
    const uint8_t *p = f->bytes + sizeof magic, *end = f->bytes + f->n_bytes;
    int v = 0, root = 0, keys = 0;
    size_t used;
    int rc = run_pickle(m, p, end, &v, &used); /* protocol version 1001 */
    if (rc)
        return rc;
    if (m->vals[v].kind != PV_INT || m->vals[v].i != 1001)
        return BAD("%s: legacy torch.save stream of protocol version other than 1001", f->name);
    p += used;
    if ((rc = run_pickle(m, p, end, &v, &used))) /* system info: a dict */
        return rc;
    if (m->vals[v].kind != PV_DICT)
        return BAD("%s: legacy torch.save stream without its system info", f->name);
    for (size_t k = 0; k < m->n_entries; k++)
        if (m->entries[k].owner == v && str_is(&m->vals[m->entries[k].key], "little_endian") &&
            !(m->vals[m->entries[k].value].kind == PV_BOOL && m->vals[m->entries[k].value].i == 1))
            return BAD("%s: written on a big-endian machine (not supported)", f->name);
    p += used;
    if ((rc = run_pickle(m, p, end, &root, &used)) || (rc = take_state_dict(m, root)))
        return rc;
    p += used;
    if ((rc = run_pickle(m, p, end, &keys, &used)))
        return rc;
    p += used;
    if (m->vals[keys].kind != PV_LIST)
        return BAD("%s: legacy torch.save stream without its list of storages", f->name);
    int n_listed = 0;
    for (size_t k = 0; k < m->n_entries; k++) {
        if (m->entries[k].owner != keys)
            continue;
        const pv *key = &m->vals[m->entries[k].value];
        int s = -1;
        for (int j = 0; j < f->n_storages; j++)
            if (str_is(key, f->storages[j].key))
                s = j;
        if (s < 0)
            return BAD("%s: the stream lists a storage no tensor uses", f->name);
        if (f->storages[s].data)
            return BAD("%s: storage '%s' listed twice", f->name, f->storages[s].key);
        if (end - p < 8)
            return BAD("%s: truncated in storage '%s'", f->name, f->storages[s].key);
        uint64_t count = le(p, 8);
        p += 8;
        uint64_t size = (uint64_t)dtype_size(f->storages[s].dtype);
        if (count != (uint64_t)f->storages[s].n_elements || count > (uint64_t)(end - p) / size)
            return BAD("%s: storage '%s' has %llu elements where %lld are used or runs past the end", f->name,
                       f->storages[s].key, (unsigned long long)count, (long long)f->storages[s].n_elements);
        if ((rc = check_storage_bytes(f, &f->storages[s], p, count * size)))
            return rc;
        p += count * size;
        n_listed++;
    }
    if (n_listed != f->n_storages)
        return BAD("%s: a storage the tensors use is not in the stream", f->name);
    return 0;
}

/* ---- public ---------------------------------------------------------------- */

void ddpm_pth_close(ddpm_pth *f)
{
    if (!f)
        return;
    for (int k = 0; k < f->n_storages; k++)
        free(f->storages[k].key);
    for (int k = 0; k < f->n_tensors; k++)
        free((char *)f->tensors[k].pub.name);
    free(f->storages);
    free(f->tensors);
    free(f->bytes);
    free(f->name);
    free(f);
}

/* Takes ownership of bytes (freed on failure too). */
static int open_owned(ddpm_pth **out, uint8_t *bytes, size_t n_bytes, const char *name)
{
    *out = NULL;
    ddpm_pth *f = calloc(1, sizeof *f);
    char *nm = strdup(name);
    if (!f || !nm) {
        free(f);
        free(nm);
        free(bytes);
        return ddpm_error(DDPM_ENOMEM, "out of memory");
    }
    f->name = nm;
    f->bytes = bytes;
    f->n_bytes = n_bytes;
    machine m = {.f = f};
    int rc;
    if (n_bytes >= 4 && rd(bytes, 4) == 0x04034b50)
        rc = open_zip(f, &m);
    else if (n_bytes >= 15 && !memcmp(bytes, "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e", 15))
        rc = open_legacy(f, &m);
    else
        rc = BAD("%s: not a PyTorch file (neither a zip archive nor a legacy torch.save stream)", f->name);
    free(m.vals);
    free(m.items);
    free(m.entries);
    free(m.stack);
    free(m.memo);
    if (rc) {
        ddpm_pth_close(f);
        return rc;
    }
    ddpm_sha256_bytes_hex(bytes, n_bytes, f->sha256);
    *out = f;
    return 0;
}

int ddpm_pth_open_memory(ddpm_pth **out, const void *bytes, size_t n_bytes, const char *name)
{
    uint8_t *copy = malloc(n_bytes ? n_bytes : 1);
    if (!copy) {
        *out = NULL;
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory", name);
    }
    if (n_bytes)
        memcpy(copy, bytes, n_bytes);
    return open_owned(out, copy, n_bytes, name);
}

int ddpm_pth_open(ddpm_pth **out, const char *path)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    long len = -1;
    if (fseek(fp, 0, SEEK_END) == 0)
        len = ftell(fp);
    if (len < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return ddpm_error(DDPM_EIO, "%s: cannot read its size", path);
    }
    uint8_t *bytes = malloc(len ? (size_t)len : 1);
    if (!bytes) {
        fclose(fp);
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory for %ld bytes", path, len);
    }
    if (fread(bytes, 1, (size_t)len, fp) != (size_t)len) {
        fclose(fp);
        free(bytes);
        return ddpm_error(DDPM_EIO, "%s: read failed", path);
    }
    fclose(fp);
    return open_owned(out, bytes, (size_t)len, path);
}

int ddpm_pth_count(const ddpm_pth *f) { return f->n_tensors; }

const ddpm_pth_tensor *ddpm_pth_at(const ddpm_pth *f, int i)
{
    return i >= 0 && i < f->n_tensors ? &f->tensors[i].pub : NULL;
}

const ddpm_pth_tensor *ddpm_pth_find(const ddpm_pth *f, const char *name)
{
    for (int k = 0; k < f->n_tensors; k++)
        if (!strcmp(f->tensors[k].pub.name, name))
            return &f->tensors[k].pub;
    return NULL;
}

int ddpm_pth_read_f32(const ddpm_pth *f, const char *name, float *dst, size_t n_expected)
{
    const ddpm_pth_tensor *t = ddpm_pth_find(f, name);
    if (!t)
        return BAD("%s: tensor '%s' is missing", f->name, name);
    if (t->dtype != DDPM_PTH_F32)
        return BAD("%s: tensor '%s' is not float32", f->name, name);
    if ((uint64_t)t->n_elements != (uint64_t)n_expected)
        return BAD("%s: tensor '%s' has %lld values, expected %zu", f->name, name, (long long)t->n_elements,
                   n_expected);
    const tensor *full = (const tensor *)t; /* pub is the first member */
    const uint8_t *src = f->storages[full->storage].data + (size_t)full->offset * 4;
    for (size_t k = 0; k < n_expected; k++) {
        uint32_t u = (uint32_t)le(src + 4 * k, 4);
        memcpy(dst + k, &u, 4);
    }
    return 0;
}

const char *ddpm_pth_sha256(const ddpm_pth *f) { return f->sha256; }
const char *ddpm_pth_name(const ddpm_pth *f) { return f->name; }
