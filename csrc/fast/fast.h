/* atenet._fast — the optional compiled fast path (C, CPython API, OpenSSL libcrypto).
 *
 * Why: an idle ping crosses six Python process hops (tok → node → tok and back); each hop spent
 * 120–200 µs of interpreted work when cold (bench/RESULTS.md), tinc ~12–70 µs of C. The functions
 * here do a hop's common case — read, open or seal, forward, send — in one C call made from the
 * existing event-loop callback, with the GIL held throughout (so they may read and write the
 * Python objects the pure path uses: no second copy of any state to keep in step). Anything not
 * common (a first packet from a sender, a control message, a fragment, a multicast frame, an
 * error) is handed back to the pure Python path, which stays the reference and the default when
 * this module is not built (see atenet/fast.py; ATENET_PURE=1 turns it off).
 *
 * Files: core.c (module, Key, Window, Counter, seal/open glue), tok.c (tok connect's hops),
 * node.c (the node's hop), frag.c (overlay fragments). Every function below is called with the
 * GIL held, except the ones marked "no GIL": Key, Window and Counter each carry a mutex so that
 * a GIL-free engine thread (a hop's common case without the interpreter) and GIL-holding code can
 * use the same key, replay window and packet counter at once — one state, never a copy.
 */
#ifndef ATENET_FAST_H
#define ATENET_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <pthread.h>
#include <openssl/evp.h>
#ifdef AT_HAVE_SODIUM
#include <sodium.h>
#endif

/* The packet format (overlay/seal.py, docs/protocol.md):
 * network id (16) | version (1) | type (1) | key id (4, BE) | sender (4, BE) | counter (8, BE)
 * | ciphertext | tag (16). The header is the AEAD's associated data; the nonce is its last
 * 12 bytes. */
#define AT_NETWORK_ID_LEN 16
#define AT_HEADER_LEN 34
#define AT_TAG_LEN 16
#define AT_OVERHEAD 50
#define AT_VERSION_AT 16
#define AT_TYPE_AT 17
#define AT_KEY_ID_AT 18
#define AT_SENDER_AT 22
#define AT_COUNTER_AT 26
#define AT_NONCE_AT 22
#define AT_VERSION 1
#define AT_FRAME 1
#define AT_SUPERFRAME 2
#define AT_CONTROL 3
#define AT_FRAGMENT 4
#define AT_VNET_HDR_LEN 10
#define AT_MAX_PACKET 65600 /* bigger than any datagram or TAP read */

static inline uint32_t at_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t at_be64(const uint8_t *p) {
    return ((uint64_t)at_be32(p) << 32) | at_be32(p + 4);
}
static inline void at_put_be32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void at_put_be64(uint8_t *p, uint64_t v) {
    at_put_be32(p, (uint32_t)(v >> 32)); at_put_be32(p + 4, (uint32_t)v);
}

/* ---- Key: one AES-256-GCM key, its contexts set up once (Python: atenet._fast.Key(key32)) ---- */
typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    pthread_mutex_t lock; /* EVP contexts are not thread-safe: at_seal/at_open hold it */
#ifdef AT_HAVE_SODIUM
    /* libsodium's AES-256-GCM state (the expanded key and GHASH powers), for packets up to
     * AT_SODIUM_MAX bytes when the CPU has AES-NI and PCLMUL; NULL otherwise. Read-only once
     * set up, so it needs no lock. Why: an idle hop runs cold, and a seal through OpenSSL 3's
     * EVP layers costs ~7.6 µs cold (0.32 warm) against ~1.5 µs (0.26) for libsodium's one
     * function — measured in C on this machine; 8 seals/opens per ping round trip. */
    crypto_aead_aes256gcm_state *small;
#endif
} AtKey;
#define AT_SODIUM_MAX 1024
extern PyTypeObject AtKey_Type;

/* Which AES-GCM code seals a small packet: "libsodium" or "openssl" (for fast_status()). */
const char *at_small_aead(void);
/* No GIL needed for at_seal / at_open (they take key->lock, or need none for libsodium).
 * Seal: `out` gets hdr (34 bytes, copied) || ciphertext || tag; it must hold len + 50 bytes
 * (`out` may not overlap `payload`). Returns 0, or -1 (OpenSSL failed; no Python error set). */
int at_seal(AtKey *key, const uint8_t *hdr, const uint8_t *payload, size_t len, uint8_t *out);
/* Open: `packet` (len >= 50) authenticated under `key` (nonce from its header bytes), its
 * plaintext (len - 50 bytes) into `out`. Returns 0, or -1 when it does not authenticate. */
int at_open(AtKey *key, const uint8_t *packet, size_t len, uint8_t *out);

/* ---- Window: overlay/replay.py's ReplayWindow in C, same API and semantics ---- */
typedef struct {
    PyObject_HEAD
    uint32_t size;     /* counters tracked at and below top */
    uint32_t nwords;   /* ring of 64-bit words (RFC 6479), nwords * 64 >= size + 64 */
    int empty;         /* nothing accepted yet (Python: top == -1) */
    uint64_t top;
    uint64_t *bits;
    pthread_mutex_t lock; /* every read and change of the fields above holds it */
} AtWindow;
extern PyTypeObject AtWindow_Type;
/* No GIL needed (they take w->lock). Between a check and the update another thread may have
 * marked the counter: the update's 0 is then the answer (a replay), as on the pure path. */
int at_window_check(AtWindow *w, uint64_t counter);  /* 1: fresh; 0: seen or too old */
int at_window_update(AtWindow *w, uint64_t counter); /* 1: marked; 0: replay or too old */

/* ---- Counter: a Sealer's packet counter (Python: atenet._fast.Counter(start)) ----
 * With the fast path built, overlay.seal.Sealer keeps its counter here (`sealer._cell`), so
 * every packet it seals — from Python, from GIL-held C, from a GIL-free engine — takes a
 * different counter: a repeated (key, nonce) would break AES-GCM. `.value` is the counter the
 * next packet carries (2**64 once the last one was used), `.advance(now_ns)` moves it up. */
typedef struct {
    PyObject_HEAD
    uint64_t next;
    int spent; /* counter 2**64 - 1 was used: nothing more may be sealed */
    pthread_mutex_t lock;
} AtCounter;
extern PyTypeObject AtCounter_Type;
/* The next counter into *out and moved on by one: 0, or -1 when spent. No GIL needed. */
int at_counter_take(AtCounter *c, uint64_t *out);

/* ---- Glue to the pure path's objects ---- */

/* Seal `payload` as `ptype` with a Python overlay.seal.Sealer: takes its counter and moves it on
 * by one, exactly as Sealer.seal does. `out` must hold len + 50 bytes. Returns 0, or -1 with a
 * Python exception set (SealError("counter") after 2**64 packets, as the pure path). */
int at_sealer_seal(PyObject *sealer, int ptype, const uint8_t *payload, size_t len, uint8_t *out);

/* Open with a Python overlay.seal.Opener, when it holds a C replay window for `sender_id` (the
 * common case: the pure path made it on the sender's first packet). The plaintext goes into
 * `out` (len - 50 bytes, when len >= 50) and the window is updated, exactly as Opener.open does,
 * with its checks in its order (replay, short, auth, replay).
 * Returns AT_OPEN_OK; AT_OPEN_SLOW when the opener has no C window for this sender (nothing was
 * touched: call the pure path); AT_OPEN_DROP with *reason set to the drop counter's name
 * ("replay", "short", "auth"; a static string); or -1 with a Python exception set. */
#define AT_OPEN_OK 0
#define AT_OPEN_SLOW 1
#define AT_OPEN_DROP 2
int at_opener_open(PyObject *opener, const uint8_t *packet, size_t len, uint32_t sender_id,
                   uint64_t counter, uint8_t *out, const char **reason);

/* One recvmsg on a UDP socket with UDP_GRO on: the datagram (or GRO run) into buf (size
 * bytes), the sender into *from, the run's segment size into *segment (0: one datagram, no
 * run). Returns recvmsg's result (-1 with errno set). Holds no GIL-sensitive state. */
ssize_t at_recv_gro(int fd, uint8_t *buf, size_t size, struct sockaddr_storage *from,
                    size_t *segment);

/* One sendmsg of `len` bytes as a UDP GSO run of `seg`-byte datagrams (the last may be shorter)
 * to `to`: 0 sent; 1 when the kernel refuses UDP GSO here (EIO, EINVAL, ENOPROTOOPT,
 * EOPNOTSUPP: the caller turns GSO off for good and sends one datagram each); -1 for any other
 * error (errno set: the run is lost, counted as send errors). No GIL needed. */
int at_send_gso(int fd, const uint8_t *buf, size_t len, size_t seg, const void *to,
                socklen_t tolen);

/* A recvmsg source address as Python's socket module gives it: (host, port) for IPv4, (host,
 * port, flowinfo, scope_id) for IPv6; None for another family. New reference, or NULL. */
PyObject *at_addr_tuple(const struct sockaddr_storage *ss);
/* (host, port) -> sockaddr_in: 0, or 1 when it is not a plain IPv4 address tuple (no error). */
int at_parse_addr4(PyObject *addr, struct sockaddr_in *sa);

/* obj.name += n on an int attribute (the pure objects' counters are plain attributes). 0 or -1. */
int at_add_attr(PyObject *obj, PyObject *name, long long n);

/* counter[name] += n on a dict (a collections.Counter works: it is a dict). 0 or -1. */
int at_count(PyObject *counter, const char *name, long n);

/* Interned attribute names and constants shared by the files; set up in module init. */
typedef struct {
    PyObject *s_cell;      /* "_cell" */
    PyObject *s_counter;   /* "_counter" (a Sealer made while ATENET_PURE=1) */
    PyObject *s_prefixes;  /* "_prefixes" */
    PyObject *s_key;       /* "key" */
    PyObject *s_fast;      /* "fast" */
    PyObject *s_windows;   /* "_windows" */
    PyObject *s_sender_id; /* "sender_id" */
    PyObject *seal_error;  /* atenet.overlay.seal.SealError, looked up lazily */
} AtNames;
extern AtNames at_names;

/* ---- NodeEngine (nodeengine.c): the node's unicast hop in a GIL-free thread ---- */
extern PyTypeObject AtNodeEngine_Type;

/* What node.c knows when it has just taken its inline unicast branch client port -> client
 * port for a frame or an offloaded packet without GSO (every check passed): enough to cache
 * the flow in a NodeEngine. */
typedef struct {
    const uint8_t *packet; /* the sealed datagram (its header names network, key, sender) */
    const uint8_t *frame;  /* the opened frame (destination and source MAC) */
    PyObject *addr;        /* the sender's (host, port) */
    PyObject *opener;      /* the access key's Opener */
    PyObject *window;      /* the sender's C replay window in it */
    PyObject *port;        /* the source UdpClientPort (NULL: from a peer node, key 0) */
    PyObject *core;        /* the NodeCore (datagrams) */
    PyObject *sw;          /* the network's Switch (now) */
    PyObject *dst;         /* the destination UdpClientPort (NULL: to a peer node) */
    PyObject *sealer;      /* its Sealer (the node sealer, to a peer) */
    PyObject *dst_addr;    /* its (host, port) */
    double rate, burst;    /* the node's PortLimits */
    size_t fragment_size;  /* overlay/fragment.py FRAGMENT_SIZE */
} AtEngineNote;

/* Record the flow in `engine` (a NodeEngine, else nothing happens); the entry is used from the
 * engine's next arm() while nothing it depends on changed. 0, or -1 with a Python error. */
int at_engine_note(PyObject *engine, const AtEngineNote *note);

/* Overlay fragments (frag.c, overlay/fragment.py), in C and without the GIL: */
#define AT_FRAG_TOO_BIG ((size_t)-1) /* a sealed packet above fragment.MAX_PACKET */
/* Bytes at_frag_cut writes for a sealed packet of `size` bytes, or AT_FRAG_TOO_BIG. */
size_t at_frag_cut_size(size_t size);
/* The fragments of sealed packet[0:size] back to back into `out` (room: at_frag_cut_size), each
 * FRAGMENT_SIZE bytes but the last (a UDP GSO send buffer); the bytes written, or
 * AT_FRAG_TOO_BIG. */
size_t at_frag_cut(const uint8_t *packet, size_t size, uint8_t *out);
/* When the GRO run p[0:end] of `segment`-byte datagrams starts with a whole packet's fragments
 * (index 0 first, its last fragment where it must be, the same sender and counter), join them
 * into `out` (NULL: only measure) and set *used to the run bytes they took: the packet's size.
 * 0: not a whole packet here (the pure Reassembler takes it). */
size_t at_frag_join(const uint8_t *p, size_t end, size_t segment, uint8_t *out, size_t *used);

/* The method tables of tok.c, node.c and frag.c, joined into the module's in core.c. */
extern PyMethodDef at_engine_methods[];
extern PyMethodDef at_tok_methods[];
extern PyMethodDef at_node_methods[];
extern PyMethodDef at_frag_methods[];

/* tokengine.c: tok connect's two hops in a GIL-free thread (atenet._fast.TokEngine). */
extern PyTypeObject TokEngine_Type;

#endif
