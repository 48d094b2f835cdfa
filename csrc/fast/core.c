/* atenet._fast: module init, Key (AES-256-GCM), Window (replay window), seal/open glue.
 * See fast.h for why this module exists and the rules its functions follow. */
#include "fast.h"

#include <string.h>
#include <openssl/err.h>

AtNames at_names;

/* ------------------------------------------------------------------------------ Key */

static void key_dealloc(AtKey *self) {
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
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
    if (self->enc == NULL) self->enc = EVP_CIPHER_CTX_new();
    if (self->dec == NULL) self->dec = EVP_CIPHER_CTX_new();
    if (self->enc == NULL || self->dec == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Key schedule once; per packet only the 12-byte IV is set. */
    if (EVP_EncryptInit_ex(self->enc, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(self->enc, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
        EVP_EncryptInit_ex(self->enc, NULL, NULL, key.buf, NULL) != 1 ||
        EVP_DecryptInit_ex(self->dec, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(self->dec, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
        EVP_DecryptInit_ex(self->dec, NULL, NULL, key.buf, NULL) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up AES-256-GCM");
        goto done;
    }
    rc = 0;
done:
    PyBuffer_Release(&key);
    return rc;
}

int at_seal(AtKey *key, const uint8_t *hdr, const uint8_t *payload, size_t len, uint8_t *out) {
    EVP_CIPHER_CTX *ctx = key->enc;
    int n = 0;
    if (len > INT32_MAX) return -1;
    if (out != hdr) memcpy(out, hdr, AT_HEADER_LEN);
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, hdr + AT_NONCE_AT) != 1) return -1;
    if (EVP_EncryptUpdate(ctx, NULL, &n, hdr, AT_HEADER_LEN) != 1) return -1;
    if (len && EVP_EncryptUpdate(ctx, out + AT_HEADER_LEN, &n, payload, (int)len) != 1) return -1;
    if (EVP_EncryptFinal_ex(ctx, out + AT_HEADER_LEN + len, &n) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, AT_TAG_LEN, out + AT_HEADER_LEN + len) != 1)
        return -1;
    return 0;
}

int at_open(AtKey *key, const uint8_t *packet, size_t len, uint8_t *out) {
    EVP_CIPHER_CTX *ctx = key->dec;
    int n = 0;
    if (len < AT_OVERHEAD || len > INT32_MAX) return -1;
    size_t clen = len - AT_OVERHEAD;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, packet + AT_NONCE_AT) != 1) return -1;
    if (EVP_DecryptUpdate(ctx, NULL, &n, packet, AT_HEADER_LEN) != 1) return -1;
    if (clen && EVP_DecryptUpdate(ctx, out, &n, packet + AT_HEADER_LEN, (int)clen) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, AT_TAG_LEN,
                            (void *)(packet + len - AT_TAG_LEN)) != 1)
        return -1;
    if (EVP_DecryptFinal_ex(ctx, out + clen, &n) != 1) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

static PyObject *key_seal(AtKey *self, PyObject *args) {
    /* seal(header34, payload) -> header || ciphertext || tag (for tests and the pure path). */
    Py_buffer hdr, payload;
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

static PyObject *key_repr(PyObject *self) { return PyUnicode_FromString("Key(<AES-256-GCM>)"); }

PyTypeObject AtKey_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "atenet._fast.Key",
    .tp_basicsize = sizeof(AtKey),
    .tp_dealloc = (destructor)key_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One AES-256-GCM key with its OpenSSL contexts, set up once.",
    .tp_methods = key_methods,
    .tp_init = (initproc)key_init,
    .tp_new = PyType_GenericNew,
    .tp_repr = key_repr,
};

/* ---------------------------------------------------------------------------- Window */

/* Ring layout (RFC 6479): bit (c mod (nwords*64)) of the ring marks counter c, for c in
 * (top - size, top]. Advancing clears the words between the old top's word and the new one. */

static void window_dealloc(AtWindow *self) {
    PyMem_Free(self->bits);
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
    PyMem_Free(self->bits);
    self->bits = bits;
    self->nwords = nwords;
    self->size = (uint32_t)size;
    self->empty = 1;
    self->top = 0;
    return 0;
}

static inline int bit_get(AtWindow *w, uint64_t c) {
    uint64_t i = c % ((uint64_t)w->nwords * 64);
    return (w->bits[i >> 6] >> (i & 63)) & 1;
}
static inline void bit_set(AtWindow *w, uint64_t c) {
    uint64_t i = c % ((uint64_t)w->nwords * 64);
    w->bits[i >> 6] |= (uint64_t)1 << (i & 63);
}

int at_window_check(AtWindow *w, uint64_t counter) {
    if (w->empty || counter > w->top) return 1;
    uint64_t behind = w->top - counter;
    if (behind >= w->size) return 0;
    return !bit_get(w, counter);
}

/* Mark every counter in (top - size, top] as seen (start) — only those the window holds. */
static void window_fill(AtWindow *w) {
    memset(w->bits, 0, (size_t)w->nwords * sizeof(uint64_t));
    uint64_t n = w->size;
    if (!w->empty && w->top + 1 < n) n = w->top + 1; /* counters below 0 do not exist */
    for (uint64_t d = 0; d < n; d++) bit_set(w, w->top - d);
}

int at_window_update(AtWindow *w, uint64_t counter) {
    if (w->empty || counter > w->top) {
        uint64_t ringbits = (uint64_t)w->nwords * 64;
        if (w->empty || counter - w->top >= ringbits) {
            memset(w->bits, 0, (size_t)w->nwords * sizeof(uint64_t));
        } else {
            /* Clear the bits of counters (top, counter]: they are new. */
            uint64_t from = w->top + 1;
            while (from <= counter) {
                uint64_t i = from % ringbits;
                if ((i & 63) == 0 && counter - from >= 63) {
                    w->bits[i >> 6] = 0;
                    from += 64;
                } else {
                    w->bits[i >> 6] &= ~((uint64_t)1 << (i & 63));
                    from += 1;
                }
            }
        }
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

static int parse_counter(PyObject *arg, uint64_t *out) {
    /* Counters are u64; a negative or larger int is never in the window. */
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow == 0) {
        if (v < 0) return 1; /* below every counter */
        *out = (uint64_t)v;
        return 0;
    }
    if (overflow < 0) return 1;
    unsigned long long u = PyLong_AsUnsignedLongLong(arg);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 2; /* above every u64 */
    }
    *out = (uint64_t)u;
    return 0;
}

static PyObject *window_check(AtWindow *self, PyObject *arg) {
    uint64_t c = 0;
    int r = parse_counter(arg, &c);
    if (r < 0) return NULL;
    if (r == 1) return PyBool_FromLong(self->empty);
    if (r == 2) return PyBool_FromLong(1);
    return PyBool_FromLong(at_window_check(self, c));
}

static PyObject *window_update(AtWindow *self, PyObject *arg) {
    uint64_t c = 0;
    int r = parse_counter(arg, &c);
    if (r < 0) return NULL;
    if (r != 0) {
        PyErr_SetString(PyExc_ValueError, "a counter is a u64");
        return NULL;
    }
    return PyBool_FromLong(at_window_update(self, c));
}

static PyObject *window_start(AtWindow *self, PyObject *arg) {
    uint64_t c = 0;
    int r = parse_counter(arg, &c);
    if (r < 0) return NULL;
    if (r != 0) {
        PyErr_SetString(PyExc_ValueError, "a counter is a u64");
        return NULL;
    }
    self->empty = 0;
    self->top = c;
    window_fill(self);
    Py_RETURN_NONE;
}

static PyObject *window_get_top(AtWindow *self, void *closure) {
    if (self->empty) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(self->top);
}

static PyObject *window_get_size(AtWindow *self, void *closure) {
    return PyLong_FromUnsignedLong(self->size);
}

static PyObject *window_repr(AtWindow *self) {
    long marked = 0;
    if (!self->empty) {
        uint64_t n = self->size;
        if (self->top + 1 < n) n = self->top + 1;
        for (uint64_t d = 0; d < n; d++) marked += bit_get(self, self->top - d);
    }
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
    .tp_new = PyType_GenericNew,
    .tp_repr = (reprfunc)window_repr,
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
    /* holder.key.fast, borrowed semantics via a new reference the caller drops. */
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
    return (AtKey *)fast;
}

int at_sealer_seal(PyObject *sealer, int ptype, const uint8_t *payload, size_t len, uint8_t *out) {
    int rc = -1;
    PyObject *counter_obj = NULL, *prefixes = NULL, *prefix = NULL, *ptype_obj = NULL;
    PyObject *next = NULL;
    AtKey *key = NULL;
    counter_obj = PyObject_GetAttr(sealer, at_names.s_counter);
    if (counter_obj == NULL) goto done;
    unsigned long long counter = PyLong_AsUnsignedLongLong(counter_obj);
    if (counter == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) goto done;
        PyErr_Clear();
        PyObject *err = seal_error();
        if (err == NULL) goto done;
        PyObject *exc = PyObject_CallFunction(
            err, "ss", "counter", "packet counter exhausted: start a new sender session");
        if (exc != NULL) {
            PyErr_SetObject(err, exc);
            Py_DECREF(exc);
        }
        goto done;
    }
    prefixes = PyObject_GetAttr(sealer, at_names.s_prefixes);
    if (prefixes == NULL) goto done;
    ptype_obj = PyLong_FromLong(ptype);
    if (ptype_obj == NULL) goto done;
    prefix = PyDict_GetItemWithError(prefixes, ptype_obj); /* borrowed */
    if (prefix == NULL) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "unknown packet type %d", ptype);
        goto done;
    }
    if (!PyBytes_Check(prefix) || PyBytes_GET_SIZE(prefix) != AT_NONCE_AT) {
        PyErr_SetString(PyExc_TypeError, "a sealer prefix is 22 bytes");
        goto done;
    }
    key = fast_key(sealer);
    if (key == NULL) goto done;
    /* sender id: the 4 bytes after the prefix are the sender, kept in the Sealer as an int. */
    PyObject *sender_obj = PyObject_GetAttrString(sealer, "sender_id");
    if (sender_obj == NULL) goto done;
    unsigned long sender = PyLong_AsUnsignedLong(sender_obj);
    Py_DECREF(sender_obj);
    if (sender == (unsigned long)-1 && PyErr_Occurred()) goto done;
    next = PyLong_FromUnsignedLongLong(counter + 1ULL);
    if (counter == UINT64_MAX) {
        /* The pure path refuses the packet after the last counter too (struct.error). */
        Py_CLEAR(next);
        next = PyLong_FromUnsignedLongLong(counter);
        (void)next;
    }
    if (next == NULL) goto done;
    uint8_t hdr[AT_HEADER_LEN];
    memcpy(hdr, PyBytes_AS_STRING(prefix), AT_NONCE_AT);
    at_put_be32(hdr + AT_SENDER_AT, (uint32_t)sender);
    at_put_be64(hdr + AT_COUNTER_AT, counter);
    if (at_seal(key, hdr, payload, len, out)) {
        PyErr_SetString(PyExc_RuntimeError, "AES-GCM seal failed");
        goto done;
    }
    {
        /* counter + 1 as a Python int (it may pass 2**64 - 1: the next seal refuses then). */
        PyObject *one = PyLong_FromLong(1);
        PyObject *incremented = one ? PyNumber_Add(counter_obj, one) : NULL;
        Py_XDECREF(one);
        if (incremented == NULL) goto done;
        int set = PyObject_SetAttr(sealer, at_names.s_counter, incremented);
        Py_DECREF(incremented);
        if (set < 0) goto done;
    }
    rc = 0;
done:
    Py_XDECREF(counter_obj);
    Py_XDECREF(prefixes);
    Py_XDECREF(ptype_obj);
    Py_XDECREF(next);
    Py_XDECREF((PyObject *)key);
    return rc;
}

int at_opener_open(PyObject *opener, const uint8_t *packet, size_t len, uint32_t sender_id,
                   uint64_t counter, uint8_t *out, const char **reason) {
    int rc = -1;
    PyObject *windows = NULL, *sender_obj = NULL;
    AtKey *key = NULL;
    if (len < AT_OVERHEAD) {
        *reason = "short";
        return AT_OPEN_DROP;
    }
    windows = PyObject_GetAttr(opener, at_names.s_windows);
    if (windows == NULL) goto done;
    if (!PyDict_Check(windows)) {
        PyErr_SetString(PyExc_TypeError, "Opener._windows is not a dict");
        goto done;
    }
    sender_obj = PyLong_FromUnsignedLong(sender_id);
    if (sender_obj == NULL) goto done;
    PyObject *window = PyDict_GetItemWithError(windows, sender_obj); /* borrowed */
    if (window == NULL) {
        rc = PyErr_Occurred() ? -1 : AT_OPEN_SLOW;
        goto done;
    }
    if (!PyObject_TypeCheck(window, &AtWindow_Type)) {
        rc = AT_OPEN_SLOW; /* a pure-Python window: the pure path owns it */
        goto done;
    }
    AtWindow *w = (AtWindow *)window;
    if (!at_window_check(w, counter)) {
        *reason = "replay";
        rc = AT_OPEN_DROP;
        goto done;
    }
    key = fast_key(opener);
    if (key == NULL) goto done;
    /* The nonce is the header's own bytes; the caller parsed sender and counter from them. */
    if (at_be32(packet + AT_SENDER_AT) != sender_id || at_be64(packet + AT_COUNTER_AT) != counter) {
        *reason = "auth";
        rc = AT_OPEN_DROP;
        goto done;
    }
    if (at_open(key, packet, len, out)) {
        *reason = "auth";
        rc = AT_OPEN_DROP;
        goto done;
    }
    if (!at_window_update(w, counter)) {
        *reason = "replay";
        rc = AT_OPEN_DROP;
        goto done;
    }
    rc = AT_OPEN_OK;
done:
    Py_XDECREF(windows);
    Py_XDECREF(sender_obj);
    Py_XDECREF((PyObject *)key);
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

static PyObject *py_sealer_seal(PyObject *module, PyObject *args) {
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

static PyObject *py_opener_open(PyObject *module, PyObject *args) {
    /* opener_open(opener, packet, sender_id, counter) -> plaintext | None (slow) | reason str */
    PyObject *opener;
    Py_buffer packet;
    unsigned long sender;
    unsigned long long counter;
    if (!PyArg_ParseTuple(args, "Oy*kK", &opener, &packet, &sender, &counter)) return NULL;
    PyObject *result = NULL;
    size_t plen = packet.len >= AT_OVERHEAD ? (size_t)packet.len - AT_OVERHEAD : 0;
    PyObject *buf = PyBytes_FromStringAndSize(NULL, plen);
    if (buf == NULL) goto done;
    const char *reason = NULL;
    int rc = at_opener_open(opener, packet.buf, packet.len, (uint32_t)sender, counter,
                            (uint8_t *)PyBytes_AS_STRING(buf), &reason);
    if (rc == AT_OPEN_OK) {
        result = buf;
        buf = NULL;
    } else if (rc == AT_OPEN_SLOW) {
        Py_INCREF(Py_None);
        result = Py_None;
    } else if (rc == AT_OPEN_DROP) {
        result = PyUnicode_FromString(reason);
    }
    Py_XDECREF(buf);
done:
    PyBuffer_Release(&packet);
    return result;
}

static PyMethodDef core_methods[] = {
    {"sealer_seal", py_sealer_seal, METH_VARARGS,
     "sealer_seal(sealer, payload, ptype=1) -> sealed bytes, as Sealer.seal"},
    {"opener_open", py_opener_open, METH_VARARGS,
     "opener_open(opener, packet, sender_id, counter) -> plaintext, None (no window: pure "
     "path), or the drop reason"},
    {NULL}};

static int add_methods(PyObject *module, PyMethodDef *methods) {
    for (PyMethodDef *m = methods; m != NULL && m->ml_name != NULL; m++) {
        PyObject *f = PyCFunction_NewEx(m, NULL, PyModule_GetNameObject(module));
        if (f == NULL) return -1;
        int rc = PyModule_AddObject(module, m->ml_name, f);
        if (rc < 0) {
            Py_DECREF(f);
            return -1;
        }
    }
    return 0;
}

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT, "atenet._fast",
    "atenet's optional compiled fast path (see src/atenet/_fast/fast.h).", -1, core_methods};

PyMODINIT_FUNC PyInit__fast(void) {
    if (PyType_Ready(&AtKey_Type) < 0 || PyType_Ready(&AtWindow_Type) < 0) return NULL;
    at_names.s_counter = PyUnicode_InternFromString("_counter");
    at_names.s_prefixes = PyUnicode_InternFromString("_prefixes");
    at_names.s_key = PyUnicode_InternFromString("key");
    at_names.s_fast = PyUnicode_InternFromString("fast");
    at_names.s_windows = PyUnicode_InternFromString("_windows");
    if (!at_names.s_counter || !at_names.s_prefixes || !at_names.s_key || !at_names.s_fast ||
        !at_names.s_windows)
        return NULL;
    PyObject *m = PyModule_Create(&fast_module);
    if (m == NULL) return NULL;
    Py_INCREF(&AtKey_Type);
    Py_INCREF(&AtWindow_Type);
    if (PyModule_AddObject(m, "Key", (PyObject *)&AtKey_Type) < 0 ||
        PyModule_AddObject(m, "Window", (PyObject *)&AtWindow_Type) < 0 ||
        add_methods(m, at_tok_methods) < 0 || add_methods(m, at_node_methods) < 0 ||
        add_methods(m, at_frag_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
