/* atenet._fast: module init, Key (AES-256-GCM), Window (replay window), seal/open glue.
 * See fast.h for why this module exists and the rules its functions follow. */
#include "fast.h"

#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>

#define AT_SOL_UDP 17
#define AT_UDP_GRO 104
#define AT_UDP_SEGMENT 103

AtNames at_names;

#ifdef AT_HAVE_SODIUM
static int sodium_ready; /* sodium_init() succeeded and the CPU has AES-NI + PCLMUL */
#endif

const char *at_small_aead(void) {
#ifdef AT_HAVE_SODIUM
    if (sodium_ready) return "libsodium";
#endif
    return "openssl";
}

/* ------------------------------------------------------------------------------ Key */

static PyObject *key_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    AtKey *self = (AtKey *)PyType_GenericNew(type, args, kwds);
    if (self != NULL) pthread_mutex_init(&self->lock, NULL);
    return (PyObject *)self;
}

static void key_dealloc(AtKey *self) {
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
#ifdef AT_HAVE_SODIUM
    if (self->small != NULL) {
        sodium_memzero(self->small, sizeof *self->small);
        free(self->small);
    }
#endif
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int key_init(AtKey *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &key)) return -1;
    int rc = -1;
    if (key.len != 32) {
        PyErr_Format(PyExc_ValueError, "an AES-256 key is 32 bytes, not %zd", key.len);
        goto done;
    }
    if (self->enc != NULL) { /* engine threads may use it without the GIL: never changed */
        PyErr_SetString(PyExc_ValueError, "a Key is set up once");
        goto done;
    }
#ifdef AT_HAVE_SODIUM
    if (sodium_ready) {
        self->small = aligned_alloc(16, (sizeof *self->small + 15) / 16 * 16);
        if (self->small == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        crypto_aead_aes256gcm_beforenm(self->small, key.buf);
    }
#endif
    pthread_mutex_lock(&self->lock); /* an engine may be sealing with it (re-init: rare) */
    if (self->enc == NULL) self->enc = EVP_CIPHER_CTX_new();
    if (self->dec == NULL) self->dec = EVP_CIPHER_CTX_new();
    if (self->enc == NULL || self->dec == NULL) {
        pthread_mutex_unlock(&self->lock);
        PyErr_NoMemory();
        goto done;
    }
    /* Key schedule once; per packet only the 12-byte IV is set. */
    int ok = !(EVP_EncryptInit_ex(self->enc, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(self->enc, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
        EVP_EncryptInit_ex(self->enc, NULL, NULL, key.buf, NULL) != 1 ||
        EVP_DecryptInit_ex(self->dec, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(self->dec, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
        EVP_DecryptInit_ex(self->dec, NULL, NULL, key.buf, NULL) != 1);
    pthread_mutex_unlock(&self->lock);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up AES-256-GCM");
        goto done;
    }
    rc = 0;
done:
    PyBuffer_Release(&key);
    return rc;
}

int at_seal(AtKey *key, const uint8_t *hdr, const uint8_t *payload, size_t len, uint8_t *out) {
    int n = 0, rc = 0;
    if (len > INT32_MAX) return -1;
    if (out != hdr) memcpy(out, hdr, AT_HEADER_LEN);
#ifdef AT_HAVE_SODIUM
    if (key->small != NULL && len <= AT_SODIUM_MAX) {
        crypto_aead_aes256gcm_encrypt_detached_afternm(
            out + AT_HEADER_LEN, out + AT_HEADER_LEN + len, NULL, payload, len, out,
            AT_HEADER_LEN, NULL, out + AT_NONCE_AT, key->small);
        return 0;
    }
#endif
    pthread_mutex_lock(&key->lock);
    EVP_CIPHER_CTX *ctx = key->enc;
    if (ctx == NULL) {
        rc = -1;
    } else if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, hdr + AT_NONCE_AT) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &n, hdr, AT_HEADER_LEN) != 1 ||
        (len && EVP_EncryptUpdate(ctx, out + AT_HEADER_LEN, &n, payload, (int)len) != 1) ||
        EVP_EncryptFinal_ex(ctx, out + AT_HEADER_LEN + len, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, AT_TAG_LEN, out + AT_HEADER_LEN + len) != 1) {
        ERR_clear_error(); /* leave no stale error in OpenSSL's queue for the next caller */
        rc = -1;
    }
    pthread_mutex_unlock(&key->lock);
    return rc;
}

int at_open(AtKey *key, const uint8_t *packet, size_t len, uint8_t *out) {
    int n = 0, rc = 0;
    if (len < AT_OVERHEAD || len > INT32_MAX) return -1;
    size_t clen = len - AT_OVERHEAD;
#ifdef AT_HAVE_SODIUM
    if (key->small != NULL && clen <= AT_SODIUM_MAX)
        return crypto_aead_aes256gcm_decrypt_detached_afternm(
                   out, NULL, packet + AT_HEADER_LEN, clen, packet + len - AT_TAG_LEN, packet,
                   AT_HEADER_LEN, packet + AT_NONCE_AT, key->small) == 0
                   ? 0
                   : -1;
#endif
    pthread_mutex_lock(&key->lock);
    EVP_CIPHER_CTX *ctx = key->dec;
    if (ctx == NULL) {
        rc = -1;
    } else if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, packet + AT_NONCE_AT) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &n, packet, AT_HEADER_LEN) != 1 ||
        (clen && EVP_DecryptUpdate(ctx, out, &n, packet + AT_HEADER_LEN, (int)clen) != 1) ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, AT_TAG_LEN,
                            (void *)(packet + len - AT_TAG_LEN)) != 1 ||
        EVP_DecryptFinal_ex(ctx, out + clen, &n) != 1) {
        ERR_clear_error();
        rc = -1;
    }
    pthread_mutex_unlock(&key->lock);
    return rc;
}

/* Key.__new__ without __init__ leaves no contexts: refuse to use it rather than crash. */
static int key_ready(AtKey *self) {
    if (self->enc != NULL && self->dec != NULL) return 1;
    PyErr_SetString(PyExc_ValueError, "this Key was never initialised with a 32-byte key");
    return 0;
}

static PyObject *key_seal(AtKey *self, PyObject *args) {
    /* seal(header34, payload) -> header || ciphertext || tag (for tests and the pure path). */
    Py_buffer hdr, payload;
    if (!key_ready(self)) return NULL;
    if (!PyArg_ParseTuple(args, "y*y*", &hdr, &payload)) return NULL;
    PyObject *result = NULL;
    if (hdr.len != AT_HEADER_LEN) {
        PyErr_SetString(PyExc_ValueError, "a header is 34 bytes");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, payload.len + AT_OVERHEAD);
    if (result == NULL) goto done;
    if (at_seal(self, hdr.buf, payload.buf, payload.len, (uint8_t *)PyBytes_AS_STRING(result))) {
        Py_CLEAR(result);
        PyErr_SetString(PyExc_RuntimeError, "AES-GCM seal failed");
    }
done:
    PyBuffer_Release(&hdr);
    PyBuffer_Release(&payload);
    return result;
}

static PyObject *key_open(AtKey *self, PyObject *args) {
    /* open(packet) -> plaintext, or None when it does not authenticate. */
    Py_buffer packet;
    if (!key_ready(self)) return NULL;
    if (!PyArg_ParseTuple(args, "y*", &packet)) return NULL;
    PyObject *result = NULL;
    if (packet.len < AT_OVERHEAD) {
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, packet.len - AT_OVERHEAD);
    if (result == NULL) goto done;
    if (at_open(self, packet.buf, packet.len, (uint8_t *)PyBytes_AS_STRING(result))) {
        Py_DECREF(result);
        Py_INCREF(Py_None);
        result = Py_None;
    }
done:
    PyBuffer_Release(&packet);
    return result;
}

static PyMethodDef key_methods[] = {
    {"seal", (PyCFunction)key_seal, METH_VARARGS,
     "seal(header34, payload) -> header || ciphertext || tag"},
    {"open", (PyCFunction)key_open, METH_VARARGS,
     "open(packet) -> plaintext, or None when it does not authenticate"},
    {NULL}};

static PyObject *key_repr(PyObject *Py_UNUSED(self)) { return PyUnicode_FromString("Key(<AES-256-GCM>)"); }

PyTypeObject AtKey_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "atenet._fast.Key",
    .tp_basicsize = sizeof(AtKey),
    .tp_dealloc = (destructor)key_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One AES-256-GCM key with its OpenSSL contexts, set up once.",
    .tp_methods = key_methods,
    .tp_init = (initproc)key_init,
    .tp_new = key_new,
    .tp_repr = key_repr,
};

/* ---------------------------------------------------------------------------- Window */

/* Ring layout (RFC 6479): bit (c mod (nwords*64)) of the ring marks counter c, for c in
 * (top - size, top]. The ring holds at least size + 64 bits, so the counters of one window never
 * share a bit. Advancing clears the bits of the counters passed over, a word at a time; nothing
 * here computes a counter above top + 1 or below 0, so no u64 arithmetic wraps (a counter of
 * 2**64 - 1 is an ordinary top). */

static PyObject *window_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    AtWindow *self = (AtWindow *)PyType_GenericNew(type, args, kwds);
    if (self != NULL) pthread_mutex_init(&self->lock, NULL);
    return (PyObject *)self;
}

static void window_dealloc(AtWindow *self) {
    PyMem_Free(self->bits);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int window_init(AtWindow *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"size", NULL};
    long size = 2048;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|l", kwlist, &size)) return -1;
    if (size < 1) {
        PyErr_Format(PyExc_ValueError, "replay window size must be at least 1, not %ld", size);
        return -1;
    }
    if (size > (1L << 24)) {
        PyErr_SetString(PyExc_ValueError, "replay window size is at most 2**24");
        return -1;
    }
    uint32_t nwords = (uint32_t)((size + 63) / 64) + 1;
    uint64_t *bits = PyMem_Calloc(nwords, sizeof(uint64_t));
    if (bits == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_lock(&self->lock);
    uint64_t *old = self->bits;
    self->bits = bits;
    self->nwords = nwords;
    self->size = (uint32_t)size;
    self->empty = 1;
    self->top = 0;
    pthread_mutex_unlock(&self->lock);
    PyMem_Free(old);
    return 0;
}

/* Window.__new__ without __init__ has no ring (a modulo by zero if used): refuse it. */
static int window_ready(AtWindow *self) {
    if (self->bits != NULL) return 1;
    PyErr_SetString(PyExc_ValueError, "this Window was never initialised");
    return 0;
}

static inline uint64_t ring_bits(const AtWindow *w) { return (uint64_t)w->nwords * 64; }

static inline int bit_get(const AtWindow *w, uint64_t c) {
    uint64_t i = c % ring_bits(w);
    return (w->bits[i >> 6] >> (i & 63)) & 1;
}
static inline void bit_set(AtWindow *w, uint64_t c) {
    uint64_t i = c % ring_bits(w);
    w->bits[i >> 6] |= (uint64_t)1 << (i & 63);
}

/* Set (value 1) or clear (0) the bits of `count` consecutive counters from `first` (count is
 * below ring_bits, so each bit is touched once), a word at a time. */
static void ring_fill(AtWindow *w, uint64_t first, uint64_t count, int value) {
    uint64_t ring = ring_bits(w);
    uint64_t pos = first % ring;
    while (count > 0) {
        uint64_t bit = pos & 63;
        uint64_t take = 64 - bit; /* ring is a multiple of 64: a word never straddles its end */
        if (take > count) take = count;
        uint64_t mask = (take == 64 ? ~(uint64_t)0 : (((uint64_t)1 << take) - 1)) << bit;
        if (value)
            w->bits[pos >> 6] |= mask;
        else
            w->bits[pos >> 6] &= ~mask;
        count -= take;
        pos += take;
        if (pos == ring) pos = 0;
    }
}

static int window_check_locked(AtWindow *w, uint64_t counter) {
    if (w->empty || counter > w->top) return 1;
    uint64_t behind = w->top - counter;
    if (behind >= w->size) return 0;
    return !bit_get(w, counter);
}

static int window_update_locked(AtWindow *w, uint64_t counter) {
    if (w->empty || counter > w->top) {
        if (w->empty || counter - w->top >= ring_bits(w))
            memset(w->bits, 0, (size_t)w->nwords * sizeof(uint64_t));
        else /* the counters (top, counter] are new: clear their bits (top < counter here) */
            ring_fill(w, w->top + 1, counter - w->top, 0);
        w->empty = 0;
        w->top = counter;
        bit_set(w, counter);
        return 1;
    }
    uint64_t behind = w->top - counter;
    if (behind >= w->size) return 0;
    if (bit_get(w, counter)) return 0;
    bit_set(w, counter);
    return 1;
}

int at_window_check(AtWindow *w, uint64_t counter) {
    pthread_mutex_lock(&w->lock);
    int r = w->bits != NULL && window_check_locked(w, counter);
    pthread_mutex_unlock(&w->lock);
    return r;
}

int at_window_update(AtWindow *w, uint64_t counter) {
    pthread_mutex_lock(&w->lock);
    int r = w->bits != NULL && window_update_locked(w, counter);
    pthread_mutex_unlock(&w->lock);
    return r;
}

/* start(counter): top = counter and every counter in (top - size, top] seen — only those that
 * exist (near 0 the window reaches below the first counter; those bits stay clear). */
static void window_start_at(AtWindow *w, uint64_t counter) {
    memset(w->bits, 0, (size_t)w->nwords * sizeof(uint64_t));
    uint64_t n = w->size;
    if (counter < n - 1) n = counter + 1; /* counter + 1 cannot wrap: counter < size - 1 */
    w->empty = 0;
    w->top = counter;
    ring_fill(w, counter - (n - 1), n, 1);
}

static int parse_counter(PyObject *arg, uint64_t *out) {
    /* Counters are u64: 0 and *out set, 1 for a negative int, 2 for one above 2**64 - 1. */
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow == 0) {
        if (v < 0) return 1;
        *out = (uint64_t)v;
        return 0;
    }
    if (overflow < 0) return 1;
    unsigned long long u = PyLong_AsUnsignedLongLong(arg);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return 2;
    }
    *out = (uint64_t)u;
    return 0;
}

static PyObject *window_check(AtWindow *self, PyObject *arg) {
    uint64_t c = 0;
    if (!window_ready(self)) return NULL;
    int r = parse_counter(arg, &c);
    if (r < 0) return NULL;
    if (r == 1) { /* below every counter: too old, unless nothing was accepted yet */
        pthread_mutex_lock(&self->lock);
        int empty = self->empty;
        pthread_mutex_unlock(&self->lock);
        return PyBool_FromLong(empty);
    }
    if (r == 2) return PyBool_FromLong(1);           /* above every counter: ahead */
    return PyBool_FromLong(at_window_check(self, c));
}

/* The u64 counter update() and start() take (a ready window): 0, or -1 with an error set. */
static int window_u64_arg(AtWindow *self, PyObject *arg, uint64_t *c) {
    if (!window_ready(self)) return -1;
    int r = parse_counter(arg, c);
    if (r < 0) return -1;
    if (r != 0) {
        PyErr_SetString(PyExc_ValueError, "a counter is a u64");
        return -1;
    }
    return 0;
}

static PyObject *window_update(AtWindow *self, PyObject *arg) {
    uint64_t c = 0;
    if (window_u64_arg(self, arg, &c) < 0) return NULL;
    return PyBool_FromLong(at_window_update(self, c));
}

static PyObject *window_start(AtWindow *self, PyObject *arg) {
    uint64_t c = 0;
    if (window_u64_arg(self, arg, &c) < 0) return NULL;
    pthread_mutex_lock(&self->lock);
    window_start_at(self, c);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *window_get_top(AtWindow *self, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&self->lock);
    int empty = self->empty;
    uint64_t top = self->top;
    pthread_mutex_unlock(&self->lock);
    if (empty) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(top);
}

static PyObject *window_get_size(AtWindow *self, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLong(self->size);
}

static PyObject *window_repr(AtWindow *self) {
    long marked = 0;
    pthread_mutex_lock(&self->lock);
    if (!self->empty && self->bits != NULL) {
        uint64_t n = self->size;
        if (self->top + 1 < n) n = self->top + 1;
        for (uint64_t d = 0; d < n; d++) marked += bit_get(self, self->top - d);
    }
    pthread_mutex_unlock(&self->lock);
    PyObject *top = window_get_top(self, NULL);
    if (top == NULL) return NULL;
    PyObject *r = PyUnicode_FromFormat("ReplayWindow(size=%u, top=%S, marked=%ld)", self->size,
                                       top, marked);
    Py_DECREF(top);
    return r;
}

static PyMethodDef window_methods[] = {
    {"check", (PyCFunction)window_check, METH_O,
     "True when counter has not been accepted and is not too old. Changes nothing."},
    {"update", (PyCFunction)window_update, METH_O,
     "Mark counter as accepted; False (nothing marked) if a replay or too old."},
    {"start", (PyCFunction)window_start, METH_O,
     "Open the window at counter with every counter below it counted as seen."},
    {NULL}};

static PyGetSetDef window_getset[] = {
    {"top", (getter)window_get_top, NULL, "highest accepted counter (-1: none)", NULL},
    {"size", (getter)window_get_size, NULL, "counters tracked at and below top", NULL},
    {NULL}};

PyTypeObject AtWindow_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "atenet._fast.Window",
    .tp_basicsize = sizeof(AtWindow),
    .tp_dealloc = (destructor)window_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "overlay.replay.ReplayWindow in C: the same API and semantics.",
    .tp_methods = window_methods,
    .tp_getset = window_getset,
    .tp_init = (initproc)window_init,
    .tp_new = window_new,
    .tp_repr = (reprfunc)window_repr,
};

/* --------------------------------------------------------------------------- Counter */

int at_counter_take(AtCounter *c, uint64_t *out) {
    pthread_mutex_lock(&c->lock);
    int rc = 0;
    if (c->spent) {
        rc = -1;
    } else {
        *out = c->next;
        if (c->next == UINT64_MAX)
            c->spent = 1; /* 2**64 - 1 was the last: refusing beats wrapping to a used nonce */
        else
            c->next++;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static PyObject *counter_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    AtCounter *self = (AtCounter *)PyType_GenericNew(type, args, kwds);
    if (self != NULL) pthread_mutex_init(&self->lock, NULL);
    return (PyObject *)self;
}

static void counter_dealloc(AtCounter *self) {
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A counter value from Python: 0..2**64 (2**64: spent). 0 with *next / *spent set, or -1. */
static int counter_value_arg(PyObject *arg, uint64_t *next, int *spent) {
    if (!PyLong_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "a counter is an int");
        return -1;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(arg);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        /* Negative, or above 2**64 - 1: only 2**64 itself (spent) is a counter's value. */
        PyObject *limit = PyLong_FromUnsignedLongLong(UINT64_MAX);
        PyObject *one = PyLong_FromLong(1);
        PyObject *top = limit && one ? PyNumber_Add(limit, one) : NULL;
        Py_XDECREF(limit);
        Py_XDECREF(one);
        if (top == NULL) return -1;
        int eq = PyObject_RichCompareBool(arg, top, Py_EQ);
        Py_DECREF(top);
        if (eq < 0) return -1;
        if (!eq) {
            PyErr_SetString(PyExc_ValueError, "a counter is a u64 (or 2**64 once spent)");
            return -1;
        }
        *next = UINT64_MAX;
        *spent = 1;
        return 0;
    }
    *next = u;
    *spent = 0;
    return 0;
}

static int counter_init_value(AtCounter *self, PyObject *value) {
    uint64_t next;
    int spent;
    if (counter_value_arg(value, &next, &spent) < 0) return -1;
    pthread_mutex_lock(&self->lock);
    self->next = next;
    self->spent = spent;
    pthread_mutex_unlock(&self->lock);
    return 0;
}

static int counter_init(AtCounter *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"start", NULL};
    PyObject *start;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &start)) return -1;
    return counter_init_value(self, start);
}

static PyObject *counter_get_value(AtCounter *self, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&self->lock);
    uint64_t next = self->next;
    int spent = self->spent;
    pthread_mutex_unlock(&self->lock);
    if (!spent) return PyLong_FromUnsignedLongLong(next);
    PyObject *last = PyLong_FromUnsignedLongLong(UINT64_MAX), *one = PyLong_FromLong(1);
    PyObject *r = last && one ? PyNumber_Add(last, one) : NULL;
    Py_XDECREF(last);
    Py_XDECREF(one);
    return r;
}

static int counter_set_value(AtCounter *self, PyObject *value, void *Py_UNUSED(closure)) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a counter's value cannot be deleted");
        return -1;
    }
    return counter_init_value(self, value);
}

static PyObject *counter_advance(AtCounter *self, PyObject *arg) {
    /* Sealer.advance: up to now_ns, never down (and never out of spent). */
    if (!PyLong_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "now_ns is an int");
        return NULL;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && PyErr_Occurred()) return NULL;
    if (overflow < 0 || (overflow == 0 && v < 0)) Py_RETURN_NONE; /* below any counter */
    uint64_t now = (uint64_t)v;
    int beyond = 0; /* above 2**64 - 1: every counter is used up, as on the pure path */
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(arg);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
            PyErr_Clear();
            beyond = 1;
        }
        now = (uint64_t)u;
    }
    pthread_mutex_lock(&self->lock);
    if (beyond) {
        self->next = UINT64_MAX;
        self->spent = 1;
    } else if (!self->spent && now > self->next) {
        self->next = now;
    }
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *counter_take(AtCounter *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t c;
    if (at_counter_take(self, &c) < 0) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(c);
}

static PyObject *counter_repr(AtCounter *self) {
    PyObject *v = counter_get_value(self, NULL);
    if (v == NULL) return NULL;
    PyObject *r = PyUnicode_FromFormat("Counter(%S)", v);
    Py_DECREF(v);
    return r;
}

static PyMethodDef counter_methods[] = {
    {"advance", (PyCFunction)counter_advance, METH_O,
     "advance(now_ns): move up to the clock, never down"},
    {"take", (PyCFunction)counter_take, METH_NOARGS,
     "take() -> the next counter, moved on by one; None once spent"},
    {NULL}};

static PyGetSetDef counter_getset[] = {
    {"value", (getter)counter_get_value, (setter)counter_set_value,
     "the counter the next packet carries (2**64 once spent)", NULL},
    {NULL}};

PyTypeObject AtCounter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "atenet._fast.Counter",
    .tp_basicsize = sizeof(AtCounter),
    .tp_dealloc = (destructor)counter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A Sealer's packet counter behind a mutex: every seal, in any thread, takes its own.",
    .tp_methods = counter_methods,
    .tp_getset = counter_getset,
    .tp_init = (initproc)counter_init,
    .tp_new = counter_new,
    .tp_repr = (reprfunc)counter_repr,
};

/* ------------------------------------------------------------------------------ glue */

static PyObject *seal_error(void) {
    if (at_names.seal_error == NULL) {
        PyObject *mod = PyImport_ImportModule("atenet.overlay.seal");
        if (mod == NULL) return NULL;
        at_names.seal_error = PyObject_GetAttrString(mod, "SealError");
        Py_DECREF(mod);
    }
    return at_names.seal_error;
}

static AtKey *fast_key(PyObject *holder) {
    /* holder.key.fast as a new reference (the caller drops it), checked to be a ready Key. */
    PyObject *key = PyObject_GetAttr(holder, at_names.s_key);
    if (key == NULL) return NULL;
    PyObject *fast = PyObject_GetAttr(key, at_names.s_fast);
    Py_DECREF(key);
    if (fast == NULL) return NULL;
    if (!PyObject_TypeCheck(fast, &AtKey_Type)) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_TypeError, "key.fast is not an atenet._fast.Key");
        return NULL;
    }
    if (!key_ready((AtKey *)fast)) {
        Py_DECREF(fast);
        return NULL;
    }
    return (AtKey *)fast;
}

static void raise_counter_exhausted(void) {
    /* SealError("counter", ...) exactly as Sealer.seal raises it. */
    PyObject *err = seal_error();
    if (err == NULL) return;
    PyObject *exc = PyObject_CallFunction(err, "ss", "counter",
                                          "packet counter exhausted: start a new sender session");
    if (exc != NULL) {
        PyErr_SetObject(err, exc);
        Py_DECREF(exc);
    }
}

/* An int attribute of `obj` as a u64 no greater than `max`: 0; 1 when it is out of range
 * (negative or above max: no Python error set); -1 with a Python error (not an int). */
static int attr_u64(PyObject *obj, PyObject *name, uint64_t max, uint64_t *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%U is not an int", name);
        Py_DECREF(v);
        return -1;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(v); /* OverflowError: negative or > u64 */
    Py_DECREF(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return 1;
    }
    if (u > max) return 1;
    *out = u;
    return 0;
}

/* sealer._cell as a new reference; NULL with no error set when the sealer has none (one made
 * while ATENET_PURE=1 keeps a plain int `_counter`: tests hand those to the C glue too), NULL
 * with an error set otherwise. */
static AtCounter *sealer_cell(PyObject *sealer) {
    PyObject *cell = PyObject_GetAttr(sealer, at_names.s_cell);
    if (cell == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) PyErr_Clear();
        return NULL;
    }
    if (!PyObject_TypeCheck(cell, &AtCounter_Type)) {
        Py_DECREF(cell);
        PyErr_SetString(PyExc_TypeError, "Sealer._cell is not an atenet._fast.Counter");
        return NULL;
    }
    return (AtCounter *)cell;
}

/* sealer._counter = counter + 1 for a plain int counter (2**64 after the last one: the next
 * seal then refuses, as the pure path). 0 or -1. */
static int set_next_counter(PyObject *sealer, uint64_t counter) {
    PyObject *next;
    if (counter < UINT64_MAX) {
        next = PyLong_FromUnsignedLongLong(counter + 1);
    } else {
        PyObject *last = PyLong_FromUnsignedLongLong(counter), *one = PyLong_FromLong(1);
        next = last && one ? PyNumber_Add(last, one) : NULL;
        Py_XDECREF(last);
        Py_XDECREF(one);
    }
    if (next == NULL) return -1;
    int rc = PyObject_SetAttr(sealer, at_names.s_counter, next);
    Py_DECREF(next);
    return rc;
}

int at_sealer_seal(PyObject *sealer, int ptype, const uint8_t *payload, size_t len, uint8_t *out) {
    /* Same checks in the same order as Sealer.seal: the header fields pack (counter and sender
     * are a u64 and a u32, else SealError("counter")), then the type is known (ValueError);
     * the counter is taken (moved on) only once nothing else can fail but the cipher. */
    uint64_t counter = 0, sender = 0;
    AtCounter *cell = sealer_cell(sealer);
    if (cell == NULL && PyErr_Occurred()) return -1;
    AtKey *key = NULL;
    int rc = -1, spent = 0;
    int r = 0;
    if (cell == NULL) /* a plain int counter: read here, moved on below */
        r = attr_u64(sealer, at_names.s_counter, UINT64_MAX, &counter);
    if (r == 0) r = attr_u64(sealer, at_names.s_sender_id, UINT32_MAX, &sender);
    if (r < 0) goto done;
    if (cell != NULL) {
        pthread_mutex_lock(&cell->lock);
        spent = cell->spent;
        pthread_mutex_unlock(&cell->lock);
    }
    if (r > 0 || spent) {
        raise_counter_exhausted();
        goto done;
    }
    PyObject *prefixes = PyObject_GetAttr(sealer, at_names.s_prefixes);
    if (prefixes == NULL) goto done;
    if (!PyDict_Check(prefixes)) {
        Py_DECREF(prefixes);
        PyErr_SetString(PyExc_TypeError, "Sealer._prefixes is not a dict");
        goto done;
    }
    uint8_t hdr[AT_HEADER_LEN];
    PyObject *prefix = NULL;
    if (ptype >= 0 && ptype <= 255) {
        PyObject *ptype_obj = PyLong_FromLong(ptype); /* a cached small int: no allocation */
        if (ptype_obj == NULL) {
            Py_DECREF(prefixes);
            goto done;
        }
        prefix = PyDict_GetItemWithError(prefixes, ptype_obj); /* borrowed */
        Py_DECREF(ptype_obj);
    }
    if (prefix == NULL || !PyBytes_Check(prefix) || PyBytes_GET_SIZE(prefix) != AT_NONCE_AT) {
        if (!PyErr_Occurred()) {
            if (prefix == NULL)
                PyErr_Format(PyExc_ValueError, "unknown packet type %d", ptype);
            else
                PyErr_SetString(PyExc_TypeError, "a sealer prefix is 22 bytes");
        }
        Py_DECREF(prefixes);
        goto done;
    }
    memcpy(hdr, PyBytes_AS_STRING(prefix), AT_NONCE_AT);
    Py_DECREF(prefixes); /* prefix was borrowed from it: not used below */
    key = fast_key(sealer);
    if (key == NULL) goto done;
    if (cell != NULL) {
        if (at_counter_take(cell, &counter) < 0) { /* spent by another thread since the check */
            raise_counter_exhausted();
            goto done;
        }
    } else if (set_next_counter(sealer, counter) < 0) {
        goto done;
    }
    at_put_be32(hdr + AT_SENDER_AT, (uint32_t)sender);
    at_put_be64(hdr + AT_COUNTER_AT, counter);
    if (at_seal(key, hdr, payload, len, out)) {
        PyErr_SetString(PyExc_RuntimeError, "AES-GCM seal failed");
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF((PyObject *)key);
    Py_XDECREF((PyObject *)cell);
    return rc;
}

int at_opener_open(PyObject *opener, const uint8_t *packet, size_t len, uint32_t sender_id,
                   uint64_t counter, uint8_t *out, const char **reason) {
    /* Opener.open's checks in its order, for a sender with a C window: replay (before any AES
     * time), short, auth, then replay again when marking. */
    int rc = -1;
    PyObject *windows = NULL, *sender_obj = NULL, *window = NULL;
    AtKey *key = NULL;
    windows = PyObject_GetAttr(opener, at_names.s_windows);
    if (windows == NULL) goto done;
    if (!PyDict_Check(windows)) {
        PyErr_SetString(PyExc_TypeError, "Opener._windows is not a dict");
        goto done;
    }
    sender_obj = PyLong_FromUnsignedLong(sender_id);
    if (sender_obj == NULL) goto done;
    window = PyDict_GetItemWithError(windows, sender_obj);
    if (window == NULL) {
        rc = PyErr_Occurred() ? -1 : AT_OPEN_SLOW;
        goto done;
    }
    if (!PyObject_TypeCheck(window, &AtWindow_Type) || ((AtWindow *)window)->bits == NULL) {
        window = NULL;
        rc = AT_OPEN_SLOW; /* a pure-Python window: the pure path owns it */
        goto done;
    }
    Py_INCREF(window); /* held across the attribute lookups below, which run Python code */
    AtWindow *w = (AtWindow *)window;
    *reason = "replay";
    if (!at_window_check(w, counter)) {
        rc = AT_OPEN_DROP;
        goto done;
    }
    *reason = "short";
    if (len < AT_OVERHEAD) {
        rc = AT_OPEN_DROP;
        goto done;
    }
    key = fast_key(opener);
    if (key == NULL) goto done;
    /* The pure path builds the nonce from sender_id and counter; here it is the header's own
     * bytes, so those must be the same or the packet would open under a nonce it does not name
     * (with them different the pure path fails auth too). */
    *reason = "auth";
    if (at_be32(packet + AT_SENDER_AT) != sender_id || at_be64(packet + AT_COUNTER_AT) != counter ||
        at_open(key, packet, len, out)) {
        rc = AT_OPEN_DROP;
        goto done;
    }
    *reason = "replay";
    rc = at_window_update(w, counter) ? AT_OPEN_OK : AT_OPEN_DROP;
done:
    if (rc != AT_OPEN_DROP) *reason = NULL;
    Py_XDECREF(window);
    Py_XDECREF(windows);
    Py_XDECREF(sender_obj);
    Py_XDECREF((PyObject *)key);
    return rc;
}

ssize_t at_recv_gro(int fd, uint8_t *buf, size_t size, struct sockaddr_storage *from,
                    size_t *segment) {
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {buf, size};
    struct msghdr msg = {0};
    msg.msg_name = from;
    msg.msg_namelen = sizeof *from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    *segment = 0;
    ssize_t n = recvmsg(fd, &msg, 0);
    if (n < 0) return n;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == AT_SOL_UDP && cm->cmsg_type == AT_UDP_GRO) {
            int seg = 0;
            memcpy(&seg, CMSG_DATA(cm), sizeof seg);
            *segment = seg > 0 ? (size_t)seg : 0;
        }
    }
    return n;
}

int at_send_gso(int fd, const uint8_t *buf, size_t len, size_t seg, const void *to,
                socklen_t tolen) {
    char control[CMSG_SPACE(sizeof(uint16_t))];
    memset(control, 0, sizeof control);
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg = {.msg_name = (void *)to,
                         .msg_namelen = tolen,
                         .msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = AT_SOL_UDP;
    cm->cmsg_type = AT_UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t size = (uint16_t)seg;
    memcpy(CMSG_DATA(cm), &size, sizeof size);
    ssize_t sent;
    do {
        sent = sendmsg(fd, &msg, 0);
    } while (sent < 0 && errno == EINTR);
    if (sent >= 0) return 0;
    int err = errno;
    return err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP ? 1 : -1;
}

PyObject *at_addr_tuple(const struct sockaddr_storage *ss) {
    char text[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
        return Py_BuildValue("(si)", text, ntohs(sin->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
        return Py_BuildValue("(siII)", text, ntohs(sin6->sin6_port),
                             (unsigned)ntohl(sin6->sin6_flowinfo), (unsigned)sin6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

int at_parse_addr4(PyObject *addr, struct sockaddr_in *sa) {
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) != 2) return 1;
    PyObject *host = PyTuple_GET_ITEM(addr, 0), *port = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_Check(host) || !PyLong_Check(port)) return 1;
    const char *text = PyUnicode_AsUTF8(host);
    if (text == NULL) {
        PyErr_Clear();
        return 1;
    }
    long p = PyLong_AsLong(port);
    if (p < 0 || p > 65535) {
        PyErr_Clear();
        return 1;
    }
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)p);
    return inet_pton(AF_INET, text, &sa->sin_addr) == 1 ? 0 : 1;
}

int at_add_attr(PyObject *obj, PyObject *name, long long n) {
    if (n == 0) return 0;
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL) return -1;
    PyObject *d = PyLong_FromLongLong(n);
    PyObject *sum = d ? PyNumber_Add(old, d) : NULL;
    Py_DECREF(old);
    Py_XDECREF(d);
    if (sum == NULL) return -1;
    int rc = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

int at_count(PyObject *counter, const char *name, long n) {
    PyObject *key = PyUnicode_InternFromString(name);
    if (key == NULL) return -1;
    PyObject *old = PyDict_GetItemWithError(counter, key); /* borrowed */
    long value = n;
    if (old != NULL) {
        long prev = PyLong_AsLong(old);
        if (prev == -1 && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        value += prev;
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    PyObject *v = PyLong_FromLong(value);
    int rc = v ? PyDict_SetItem(counter, key, v) : -1;
    Py_XDECREF(v);
    Py_DECREF(key);
    return rc;
}

/* Python-visible glue, for tests and for the pure path's Sealer/Opener to use directly. */

static PyObject *py_sealer_seal(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *sealer;
    Py_buffer payload;
    int ptype = AT_FRAME;
    if (!PyArg_ParseTuple(args, "Oy*|i", &sealer, &payload, &ptype)) return NULL;
    PyObject *result = PyBytes_FromStringAndSize(NULL, payload.len + AT_OVERHEAD);
    if (result != NULL &&
        at_sealer_seal(sealer, ptype, payload.buf, payload.len,
                       (uint8_t *)PyBytes_AS_STRING(result)) < 0)
        Py_CLEAR(result);
    PyBuffer_Release(&payload);
    return result;
}

static PyObject *py_opener_open(PyObject *Py_UNUSED(module), PyObject *args) {
    /* opener_open(opener, packet, sender_id, counter) -> plaintext | None (slow) | reason str */
    PyObject *opener, *sender_obj, *counter_obj;
    Py_buffer packet;
    if (!PyArg_ParseTuple(args, "Oy*O!O!", &opener, &packet, &PyLong_Type, &sender_obj,
                          &PyLong_Type, &counter_obj))
        return NULL;
    PyObject *result = NULL, *buf = NULL;
    /* Range-checked (the "k"/"K" formats would truncate 2**32 + 5 to sender 5). */
    unsigned long long sender = PyLong_AsUnsignedLongLong(sender_obj);
    if (sender == (unsigned long long)-1 && PyErr_Occurred()) goto done;
    if (sender > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a sender id is a u32");
        goto done;
    }
    unsigned long long counter = PyLong_AsUnsignedLongLong(counter_obj);
    if (counter == (unsigned long long)-1 && PyErr_Occurred()) goto done;
    size_t plen = packet.len >= AT_OVERHEAD ? (size_t)packet.len - AT_OVERHEAD : 0;
    buf = PyBytes_FromStringAndSize(NULL, plen);
    if (buf == NULL) goto done;
    const char *reason = NULL;
    int rc = at_opener_open(opener, packet.buf, packet.len, (uint32_t)sender, counter,
                            (uint8_t *)PyBytes_AS_STRING(buf), &reason);
    if (rc == AT_OPEN_OK) {
        result = buf;
        buf = NULL;
    } else if (rc == AT_OPEN_SLOW) {
        result = Py_NewRef(Py_None);
    } else if (rc == AT_OPEN_DROP) {
        result = PyUnicode_InternFromString(reason);
    }
done:
    Py_XDECREF(buf);
    PyBuffer_Release(&packet);
    return result;
}

static PyObject *py_small_aead(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored)) {
    return PyUnicode_FromString(at_small_aead());
}

static PyMethodDef core_methods[] = {
    {"small_aead", py_small_aead, METH_NOARGS,
     "small_aead() -> 'libsodium' or 'openssl': the AES-GCM code for packets up to 1 KB"},
    {"sealer_seal", py_sealer_seal, METH_VARARGS,
     "sealer_seal(sealer, payload, ptype=1) -> sealed bytes, as Sealer.seal"},
    {"opener_open", py_opener_open, METH_VARARGS,
     "opener_open(opener, packet, sender_id, counter) -> plaintext, None (no window: pure "
     "path), or the drop reason"},
    {NULL}};

static int add_methods(PyObject *module, PyMethodDef *methods) {
    PyObject *name = PyModule_GetNameObject(module);
    if (name == NULL) return -1;
    int rc = 0;
    for (PyMethodDef *m = methods; m != NULL && m->ml_name != NULL; m++) {
        PyObject *f = PyCFunction_NewEx(m, NULL, name);
        if (f == NULL || PyModule_AddObject(module, m->ml_name, f) < 0) {
            Py_XDECREF(f); /* PyModule_AddObject steals only on success */
            rc = -1;
            break;
        }
    }
    Py_DECREF(name);
    return rc;
}

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "atenet._fast",
    .m_doc = "atenet's optional compiled fast path (see csrc/fast/fast.h, docs/fastpath.md).",
    .m_size = -1,
    .m_methods = core_methods,
};

static int add_type(PyObject *module, const char *name, PyTypeObject *type) {
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__fast(void) {
#ifdef AT_HAVE_SODIUM
    /* ATENET_NO_SODIUM=1 at run time too: OpenSSL for every size (for A/B benches). */
    const char *no = getenv("ATENET_NO_SODIUM");
    sodium_ready = !(no != NULL && no[0] != '\0' && strcmp(no, "0") != 0) &&
                   sodium_init() >= 0 && crypto_aead_aes256gcm_is_available();
#endif
    if (PyType_Ready(&AtKey_Type) < 0 || PyType_Ready(&AtWindow_Type) < 0 ||
        PyType_Ready(&AtCounter_Type) < 0 || PyType_Ready(&AtNodeEngine_Type) < 0)
        return NULL;
    at_names.s_cell = PyUnicode_InternFromString("_cell");
    at_names.s_counter = PyUnicode_InternFromString("_counter");
    at_names.s_prefixes = PyUnicode_InternFromString("_prefixes");
    at_names.s_key = PyUnicode_InternFromString("key");
    at_names.s_fast = PyUnicode_InternFromString("fast");
    at_names.s_windows = PyUnicode_InternFromString("_windows");
    at_names.s_sender_id = PyUnicode_InternFromString("sender_id");
    if (!at_names.s_cell || !at_names.s_counter || !at_names.s_prefixes || !at_names.s_key || !at_names.s_fast ||
        !at_names.s_windows || !at_names.s_sender_id)
        return NULL;
    PyObject *m = PyModule_Create(&fast_module);
    if (m == NULL) return NULL;
    if (add_type(m, "Key", &AtKey_Type) < 0 || add_type(m, "Window", &AtWindow_Type) < 0 ||
        add_type(m, "Counter", &AtCounter_Type) < 0 ||
        add_methods(m, at_tok_methods) < 0 || add_methods(m, at_node_methods) < 0 ||
        add_methods(m, at_frag_methods) < 0 || add_methods(m, at_engine_methods) < 0 ||
        add_type(m, "NodeEngine", &AtNodeEngine_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* tokengine.c: tok connect's GIL-free engine. */
    if (PyType_Ready(&TokEngine_Type) < 0 || add_type(m, "TokEngine", &TokEngine_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
