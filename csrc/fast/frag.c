/* Overlay fragments in C: cutting a sealed super-frame into path-MTU fragments joined in one
 * buffer (for one UDP GSO send) and putting them back together (see overlay/fragment.py).
 *
 * Why: under one bulk TCP stream the node spends ~13 % of its busy time in fragment.py — not in
 * the copying (one 63 KB memcpy each way, a few µs) but in the Python around it: a list of 88
 * scatter entries, 44 memoryview slices and prefixes per super-frame sent, the same again per
 * GRO run received. Here each is one pass over the bytes into one fresh bytes object.
 *
 * Both functions produce exactly the pure path's bytes (tests/test_fast_frag.py checks them
 * against it on random input). Only the common case of reassembly is done here: a whole packet
 * in one GRO run, or a datagram passed through. Every fragment that has to wait for others goes
 * to the pure path's own Reassembler._add, which owns the bounded pending table and the
 * ``dropped`` counter, so the bounds and the counts are the pure path's by construction. */
#include "fast.h"

#include <string.h>

#define FRAG_SIZE 1464 /* fragment.FRAGMENT_SIZE */
#define FRAG_PREFIX 32 /* fragment.PREFIX_LEN */
#define FRAG_CHUNK (FRAG_SIZE - FRAG_PREFIX)
#define FRAG_MAX (65507 / FRAG_SIZE) /* fragment.MAX_FRAGMENTS: 44 */
#define FRAG_KEY_AT (AT_NETWORK_ID_LEN + 2) /* sender + counter: 12 bytes, up to the index */
#define FRAG_INDEX_AT (FRAG_PREFIX - 2)
#define FRAG_ID_AT (AT_HEADER_LEN - 12) /* the sealed header's sender + counter */

static inline int is_fragment(const uint8_t *p, Py_ssize_t len) {
    return len > FRAG_PREFIX && p[AT_TYPE_AT] == AT_FRAGMENT;
}

/* The prefix every fragment of `packet` starts with (without its index and count): the packet's
 * network id, version and type 4, sender and counter, cut as the pure path's slices cut it (a
 * packet shorter than a header gives a shorter prefix). Returns its length. */
static size_t frag_prefix(const uint8_t *packet, size_t size, uint8_t *prefix) {
    size_t plen = size < AT_NETWORK_ID_LEN ? size : AT_NETWORK_ID_LEN;
    memcpy(prefix, packet, plen);
    prefix[plen++] = AT_VERSION;
    prefix[plen++] = AT_FRAGMENT;
    if (size > FRAG_ID_AT) {
        size_t n = (size < AT_HEADER_LEN ? size : AT_HEADER_LEN) - FRAG_ID_AT;
        memcpy(prefix + plen, packet + FRAG_ID_AT, n);
        plen += n;
    }
    return plen;
}

size_t at_frag_cut_size(size_t size) {
    size_t count = (size + FRAG_CHUNK - 1) / FRAG_CHUNK;
    if (count > FRAG_MAX) return AT_FRAG_TOO_BIG;
    uint8_t prefix[FRAG_PREFIX];
    static const uint8_t zero[AT_HEADER_LEN];
    size_t plen = frag_prefix(zero, size, prefix); /* its length depends on the size only */
    return count * (plen + 2) + size;
}

size_t at_frag_cut(const uint8_t *packet, size_t size, uint8_t *out) {
    size_t count = (size + FRAG_CHUNK - 1) / FRAG_CHUNK;
    if (count > FRAG_MAX) return AT_FRAG_TOO_BIG;
    uint8_t prefix[FRAG_PREFIX];
    size_t plen = frag_prefix(packet, size, prefix);
    uint8_t *start = out;
    for (size_t i = 0; i < count; i++) {
        size_t at = i * FRAG_CHUNK;
        size_t n = size - at < FRAG_CHUNK ? size - at : FRAG_CHUNK;
        memcpy(out, prefix, plen);
        out[plen] = (uint8_t)i;
        out[plen + 1] = (uint8_t)count;
        memcpy(out + plen + 2, packet + at, n);
        out += plen + 2 + n;
    }
    return (size_t)(out - start);
}

size_t at_frag_join(const uint8_t *p, size_t end, size_t segment, uint8_t *out, size_t *used) {
    if (segment <= FRAG_PREFIX || !is_fragment(p, (Py_ssize_t)(end < segment ? end : segment)))
        return 0;
    size_t index = p[FRAG_INDEX_AT], count = p[FRAG_INDEX_AT + 1];
    if (index != 0 || count < 2) return 0;
    size_t last = (count - 1) * segment;
    if (last >= end) return 0;
    const uint8_t *tail = p + last;
    size_t tlen = end - last < segment ? end - last : segment;
    if (!is_fragment(tail, (Py_ssize_t)tlen) || tail[FRAG_INDEX_AT] != count - 1 ||
        memcmp(tail + FRAG_KEY_AT, p + FRAG_KEY_AT, FRAG_INDEX_AT - FRAG_KEY_AT) != 0)
        return 0;
    /* A whole packet in one run: a mix-up in between fails authentication later. */
    size_t body = segment - FRAG_PREFIX;
    if (out != NULL) {
        uint8_t *dst = out;
        for (size_t i = 0; i < last; i += segment, dst += body)
            memcpy(dst, p + i + FRAG_PREFIX, body);
        memcpy(dst, tail + FRAG_PREFIX, tlen - FRAG_PREFIX);
    }
    *used = last + segment;
    return (count - 1) * body + tlen - FRAG_PREFIX;
}

/* fragment(packet) -> bytes: fragment.fragment in one pass. */
static PyObject *frag_fragment(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = NULL;
    size_t size = (size_t)buf.len;
    size_t total = at_frag_cut_size(size);
    if (total == AT_FRAG_TOO_BIG) {
        PyErr_Format(PyExc_ValueError,
                     "sealed packet of %zd bytes exceeds %d: cannot fragment", buf.len,
                     FRAG_MAX * FRAG_CHUNK);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result == NULL) goto done;
    at_frag_cut(buf.buf, size, (uint8_t *)PyBytes_AS_STRING(result));
done:
    PyBuffer_Release(&buf);
    return result;
}

/* Hand data[at:at + n] to reassembler._add (a memoryview slice, as the pure path does) and append
 * what it gives back (a whole packet, or None) to `out`. 0, or -1 with an exception set. */
static int frag_add(PyObject *reassembler, PyObject **view, PyObject *data, Py_ssize_t at,
                    Py_ssize_t n, PyObject *addr, PyObject *out) {
    static PyObject *s_add = NULL;
    if (s_add == NULL && (s_add = PyUnicode_InternFromString("_add")) == NULL) return -1;
    if (*view == NULL && (*view = PyMemoryView_FromObject(data)) == NULL) return -1;
    PyObject *piece = PySequence_GetSlice(*view, at, at + n);
    if (piece == NULL) return -1;
    PyObject *packet = PyObject_CallMethodObjArgs(reassembler, s_add, piece, addr, NULL);
    Py_DECREF(piece);
    if (packet == NULL) return -1;
    int rc = packet == Py_None ? 0 : PyList_Append(out, packet);
    Py_DECREF(packet);
    return rc;
}

/* reassemble(reassembler, data, segment, addr) -> list[bytes]: Reassembler.feed. */
static PyObject *frag_reassemble(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *reassembler, *data, *addr;
    Py_ssize_t segment;
    if (!PyArg_ParseTuple(args, "OOnO", &reassembler, &data, &segment, &addr)) return NULL;
    if (segment < 0) {
        PyErr_SetString(PyExc_ValueError, "a GRO segment size is not negative");
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *view = NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) goto fail;
    const uint8_t *p = buf.buf;
    Py_ssize_t end = buf.len;
    if (!segment || segment >= end) {
        if (!is_fragment(p, end)) {
            if (PyList_Append(out, data) < 0) goto fail;
        } else if (frag_add(reassembler, &view, data, 0, end, addr, out) < 0) {
            goto fail;
        }
        goto done;
    }
    Py_ssize_t at = 0;
    while (at < end) {
        const uint8_t *piece = p + at;
        Py_ssize_t plen = end - at < segment ? end - at : segment;
        if (!is_fragment(piece, plen)) {
            PyObject *whole = PyBytes_FromStringAndSize((const char *)piece, plen);
            if (whole == NULL) goto fail;
            int rc = PyList_Append(out, whole);
            Py_DECREF(whole);
            if (rc < 0) goto fail;
            at += segment;
            continue;
        }
        size_t used = 0;
        size_t size = at_frag_join(piece, (size_t)(end - at), (size_t)segment, NULL, &used);
        if (size) {
            PyObject *packet = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
            if (packet == NULL) goto fail;
            at_frag_join(piece, (size_t)(end - at), (size_t)segment,
                         (uint8_t *)PyBytes_AS_STRING(packet), &used);
            int rc = PyList_Append(out, packet);
            Py_DECREF(packet);
            if (rc < 0) goto fail;
            at += (Py_ssize_t)used;
            continue;
        }
        if (frag_add(reassembler, &view, data, at, plen, addr, out) < 0) goto fail;
        at += segment;
    }
done:
    Py_XDECREF(view);
    PyBuffer_Release(&buf);
    return out;
fail:
    Py_CLEAR(out);
    goto done;
}

PyMethodDef at_frag_methods[] = {
    {"fragment", frag_fragment, METH_O,
     "fragment(packet) -> bytes: overlay.fragment.fragment (the GSO send buffer), in C"},
    {"reassemble", frag_reassemble, METH_VARARGS,
     "reassemble(reassembler, data, segment, addr) -> list[bytes]: Reassembler.feed in C; "
     "fragments that must wait go to reassembler._add"},
    {NULL}};
