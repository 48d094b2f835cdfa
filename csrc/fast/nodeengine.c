/* _fast.NodeEngine: the node's unicast hop in a C thread that never takes the GIL.
 *
 * Why: a cold hop through Python (uvloop dispatch, a frame, ~50 attribute lookups) costs tens
 * of microseconds more than a C relay (HELPERS16, docs/fastpath.md "Node engine"). The engine
 * is an express lane in front of node_receive (node.c): its pthread blocks in epoll_wait on the
 * node's IPv4 UDP socket and a stop eventfd, and forwards a datagram by itself only when it
 * finds its flow in a **forwarding cache**; everything else it hands over to Python whole.
 *
 * The cache. node.c records an entry (at_engine_note) at the moment it has just taken its
 * inline unicast branch — client port -> client port, client port -> the peer node its
 * destination is behind, peer node -> client port; a frame or an offloaded packet without GSO —
 * when every check of the pure path passed. Key: network id, key id, sender id, source address.
 * Source side: the opener's Key and the sender's Window (C objects, strong refs), a client
 * port's token bucket (moved into the entry while it is armed), the frame's source and
 * destination MAC. Destination: its Sealer's Key, Counter (sealer._cell), 22-byte prefixes and
 * sender id (the node sealer's, to a peer), its address. A hit needs the
 * same source address (roaming: miss), a fresh counter, a packet that authenticates, a token
 * in the bucket, the entry's two MACs in the frame and no ARP/ND frame; then the frame is sealed
 * with the destination's key and counter and sent. Anything else is a miss.
 *
 * Hand-over (one slot): on a miss the thread keeps the datagram, takes the socket out of its
 * epoll set and writes its wake eventfd; Python (the daemon's reader on that eventfd) calls
 * take() — which flushes the cache and returns the datagram — runs node_receive on it and on
 * the rest of the socket until EAGAIN (so order per socket is kept and everything uncommon
 * runs exactly as without the engine), then arm(): the socket goes back into the epoll set.
 *
 * Ownership and invalidation. An entry is a copy of Python state that is valid only while
 * nothing it was derived from changes. Rather than find every reader, the places that change
 * ports, openers, the MAC table or switch settings bump one process-wide **generation**
 * (_fast.node_changed(), called through atenet.fast.changed() from Switch._rebuild,
 * _learn_port, _learn_peer, age, set_mirror_peers and NetworkRuntime.apply_state, _drop_key,
 * _roam, _control, refresh_peers; docs/fastpath.md says why that list is complete). Every entry carries the
 * generation it was recorded at; the thread uses only entries of the current generation, so a
 * revocation (apply_state) cuts a port at the bump, before the next datagram. The state an
 * entry owns — bucket tokens, counters, last_seen, the MAC's age — is written back to the
 * Python objects (under the GIL, under the cache mutex) by flush: at every hand-over (take),
 * on every tick of the node and every status read (sync), and at stop. At arm() the entries
 * of an old generation are dropped and the others reload the bucket from their port (Python
 * may have charged it while it handled the hand-over).
 *
 * The thread touches only C memory: the entries, the shared Key/Window/Counter objects (each
 * behind its own mutex, see fast.h) and its own buffers. Python objects are read and written
 * only by the GIL-holding calls (note, take, arm, sync, stop). */
#include "fast.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define NE_SLOTS 1024 /* open addressing, power of two */
#define NE_MAX 512    /* entries at most; past it new flows are not cached (counted) */
#define NE_RECV 65535
#define NE_BURST 64   /* datagrams per wake-up before epoll_wait again */
#define NE_GSO_SEGMENTS 64    /* transport.udp.GSO_SEGMENTS */
#define NE_GSO_BYTES 65000    /* transport.udp.GSO_BYTES */


static _Atomic uint64_t ne_generation = 1;

typedef struct {
    int used;
    uint64_t gen;  /* the generation it was recorded at */
    int loaded;    /* the bucket is in the entry (armed); 0: recorded, waiting for arm() */
    /* key */
    uint8_t netid[AT_NETWORK_ID_LEN];
    uint32_t key_id, sender_id, src_ip;
    uint16_t src_port;
    /* source side */
    AtKey *okey;
    AtWindow *win;
    PyObject *port, *core, *sw;
    double tokens, bucket_at, rate, burst, last_now;
    uint64_t frames, bytes_in, bytes_out; /* since the last flush */
    uint8_t smac[6], dmac[6];
    /* destination */
    AtKey *dkey;
    AtCounter *dctr;
    uint8_t prefix[AT_NONCE_AT], prefix2[AT_NONCE_AT]; /* a frame's, an offloaded packet's */
    int dst_offload;  /* the destination takes offloaded packets whole */
    size_t frag_max;  /* sealed packets above it are cut into fragments: node_receive */
    uint32_t dsender;
    struct sockaddr_in daddr;
    PyObject *dport;
} NeEntry;

typedef struct {
    PyObject_HEAD
    int fd;               /* the node's UDP socket (the daemon owns it) */
    int ep, stopfd, wakefd;
    pthread_t thread;
    int running;
    int paused;           /* the socket is out of the epoll set: Python has it */
    pthread_mutex_t mu;   /* the entries, the hand-over slot and the counters */
    int mu_ready;
    NeEntry *slots;
    size_t count;
    PyObject *udp;        /* its send_errors get the engine's */
    /* the hand-over slot */
    uint8_t *hbuf;
    size_t hlen, hseg;
    struct sockaddr_in hfrom;
    int has_item;
    /* the thread's buffers */
    uint8_t *rbuf, *obuf, *sbuf;
    /* The run being gathered from one GRO run (the thread's): what a sender's burst forwards
     * to one destination leaves as one UDP GSO send, as the event-loop path's held runs do —
     * one trip through the kernel instead of one per datagram. A lone datagram is never held. */
    uint8_t *gbuf;
    size_t glen, gsize;
    int gcount, gclosed, gso_off;
    struct sockaddr_in gto;
    /* counters (under mu) */
    unsigned long long forwarded, handed, full, send_errors, send_errors_folded;
} NodeEngine;

static PyObject *s_frames_from_peers, *s_frames_to_peers, *s_fdb_seen;
static PyObject *s_frames_in, *s_bytes_in, *s_frames_out, *s_bytes_out, *s_datagrams,
    *s_last_seen, *s_fdb_at, *s_fdb_mac, *s_tokens, *s_bucket_at, *s_now, *s_send_errors,
    *s_cell;

static int ne_names(void) {
    if (s_cell != NULL) return 0;
#define NAME(v, t) if ((v = PyUnicode_InternFromString(t)) == NULL) return -1;
    NAME(s_frames_in, "frames_in") NAME(s_bytes_in, "bytes_in") NAME(s_frames_out, "frames_out")
    NAME(s_bytes_out, "bytes_out") NAME(s_datagrams, "datagrams") NAME(s_last_seen, "last_seen")
    NAME(s_fdb_at, "fdb_at") NAME(s_fdb_mac, "fdb_mac") NAME(s_tokens, "tokens")
    NAME(s_bucket_at, "bucket_at") NAME(s_now, "now") NAME(s_send_errors, "send_errors")
    NAME(s_frames_from_peers, "frames_from_peers") NAME(s_frames_to_peers, "frames_to_peers")
    NAME(s_fdb_seen, "fdb_seen") NAME(s_cell, "_cell")
#undef NAME
    return 0;
}

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* time.time()'s clock: the pure path's `now` */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t ne_hash(const uint8_t *netid, uint32_t key_id, uint32_t sender_id, uint32_t ip,
                      uint16_t port) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < AT_NETWORK_ID_LEN; i++) h = (h ^ netid[i]) * 1099511628211ULL;
    h = (h ^ key_id) * 1099511628211ULL;
    h = (h ^ sender_id) * 1099511628211ULL;
    h = (h ^ ip) * 1099511628211ULL;
    h = (h ^ port) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29)) & (NE_SLOTS - 1);
}

/* The slot for this key: its entry, or the free slot where it would go. */
static NeEntry *ne_find(NodeEngine *e, const uint8_t *netid, uint32_t key_id, uint32_t sender_id,
                        uint32_t ip, uint16_t port) {
    size_t i = ne_hash(netid, key_id, sender_id, ip, port);
    for (size_t n = 0; n < NE_SLOTS; n++, i = (i + 1) & (NE_SLOTS - 1)) {
        NeEntry *s = &e->slots[i];
        if (!s->used) return s;
        if (s->key_id == key_id && s->sender_id == sender_id && s->src_ip == ip &&
            s->src_port == port && memcmp(s->netid, netid, AT_NETWORK_ID_LEN) == 0)
            return s;
    }
    return NULL; /* cannot happen: at most NE_MAX of NE_SLOTS are used */
}

/* ------------------------------------------------------------------ the thread */

static int neighbour_frame(const uint8_t *f, size_t len) {
    /* switch/snoop.py is_neighbour_frame, as node.c: ARP, or ICMPv6 135/136. */
    if (len < 56) return len >= 42 && f[12] == 8 && f[13] == 6;
    if (f[12] == 8) return f[13] == 6;
    return f[12] == 0x86 && f[13] == 0xDD && f[20] == 58 && (f[54] == 135 || f[54] == 136);
}

/* The whole hop for one datagram when the cache has its flow: 1 (sent, or counted as a send
 * error); 0: a miss, nothing that Python would see was changed (the bucket's refill is
 * Python's own formula, and the window is marked only once everything else passed). */
/* offload.check's common case (no GSO), as node.c's plain_offload. */
static int plain_offload(const uint8_t *p, size_t len) {
    if (len < AT_VNET_HDR_LEN + 14 || p[1] != 0) return 0;
    if (p[0] & 1) {
        size_t frame_len = len - AT_VNET_HDR_LEN;
        size_t start = p[6] | (size_t)p[7] << 8, offset = p[8] | (size_t)p[9] << 8;
        if (start < 14 || start + offset + 2 > frame_len) return 0;
    }
    return 1;
}

/* Send the gathered run: one sendto for one datagram, else one sendmsg with UDP_SEGMENT (a
 * kernel that refuses GSO turns it off for good: one sendto each, as UdpSocket). */
static void ne_run_flush(NodeEngine *e) {
    int count = e->gcount;
    size_t len = e->glen;
    e->gcount = 0;
    e->glen = 0;
    e->gclosed = 0;
    if (count == 0) return;
    unsigned long long errors = 0;
    if (count > 1 && !e->gso_off) {
        int rc = at_send_gso(e->fd, e->gbuf, len, e->gsize, &e->gto, sizeof e->gto);
        if (rc == 0) return;
        if (rc < 0) {
            errors = (unsigned long long)count;
            goto count;
        }
        e->gso_off = 1;
    }
    for (size_t at = 0; at < len; at += e->gsize) {
        size_t k = len - at < e->gsize ? len - at : e->gsize;
        if (sendto(e->fd, e->gbuf + at, k, 0, (struct sockaddr *)&e->gto, sizeof e->gto) < 0)
            errors++;
    }
count:
    if (errors) {
        pthread_mutex_lock(&e->mu);
        e->send_errors += errors;
        pthread_mutex_unlock(&e->mu);
    }
}

/* Add the sealed datagram in sbuf (n bytes, for `to`) to the run, flushing first unless it
 * extends it (same destination, no longer than the first, none after a shorter one). */
static void ne_run_add(NodeEngine *e, const struct sockaddr_in *to, size_t n) {
    if (e->gcount > 0 &&
        (e->gclosed || n > e->gsize || e->glen + n > NE_GSO_BYTES ||
         e->gcount >= NE_GSO_SEGMENTS || to->sin_port != e->gto.sin_port ||
         to->sin_addr.s_addr != e->gto.sin_addr.s_addr))
        ne_run_flush(e);
    if (e->gcount == 0) {
        e->gsize = n;
        e->gto = *to;
    } else if (n < e->gsize) {
        e->gclosed = 1;
    }
    memcpy(e->gbuf + e->glen, e->sbuf, n);
    e->glen += n;
    e->gcount++;
}

/* Forward one datagram when its flow is cached: 1 (sent now, or added to the run when
 * `gather`), 0 when it is a miss (nothing changed: hand it over). */
static int ne_forward(NodeEngine *e, const uint8_t *d, size_t n, const struct sockaddr_in *from,
                      int gather) {
    int ptype = n > AT_TYPE_AT ? d[AT_TYPE_AT] : 0;
    if (n < AT_OVERHEAD + 14 || d[AT_VERSION_AT] != AT_VERSION ||
        (ptype != AT_FRAME && ptype != AT_SUPERFRAME))
        return 0;
    uint32_t key_id = at_be32(d + AT_KEY_ID_AT), sender_id = at_be32(d + AT_SENDER_AT);
    uint64_t counter = at_be64(d + AT_COUNTER_AT);
    uint64_t gen = atomic_load(&ne_generation);
    double now = wall_now();
    struct sockaddr_in to;
    size_t plen = n - AT_OVERHEAD, at = ptype == AT_SUPERFRAME ? AT_VNET_HDR_LEN : 0;
    int hit = 0;
    pthread_mutex_lock(&e->mu);
    NeEntry *s = e->count ? ne_find(e, d, key_id, sender_id, from->sin_addr.s_addr,
                                    from->sin_port)
                          : NULL;
    if (s == NULL || !s->used || !s->loaded || s->gen != gen) goto out;
    if (at && (!s->dst_offload || n > s->frag_max)) goto out; /* cut for the port: Python */
    if (s->port != NULL) { /* a client port's bucket (a peer node has none) */
        double tokens = s->tokens + (now - s->bucket_at) * s->rate;
        s->tokens = tokens < s->burst ? tokens : s->burst;
        s->bucket_at = now;
        if (tokens < 1.0) goto out; /* port_rate: Python counts it */
    }
    if (!at_window_check(s->win, counter)) goto out;
    if (at_open(s->okey, d, n, e->obuf)) goto out;
    if (at && !plain_offload(e->obuf, plen)) goto out; /* GSO, or a header to refuse */
    const uint8_t *f = e->obuf + at;
    size_t flen = plen - at;
    if (flen < 14 || memcmp(f, s->dmac, 6) != 0 || memcmp(f + 6, s->smac, 6) != 0 ||
        neighbour_frame(f, flen))
        goto out;
    uint64_t ctr;
    if (at_counter_take(s->dctr, &ctr) < 0) goto out;
    if (!at_window_update(s->win, counter)) goto out; /* a copy raced it: replay, for Python */
    uint8_t hdr[AT_HEADER_LEN];
    memcpy(hdr, at ? s->prefix2 : s->prefix, AT_NONCE_AT);
    at_put_be32(hdr + AT_SENDER_AT, s->dsender);
    at_put_be64(hdr + AT_COUNTER_AT, ctr);
    if (s->port != NULL) s->tokens -= 1.0;
    s->frames++;
    s->bytes_in += flen; /* Switch.from_local / packet_from_local: the frame's bytes */
    s->bytes_out += plen; /* deliver / deliver_packet: what was sealed */
    if (now > s->last_now) s->last_now = now;
    to = s->daddr;
    hit = at_seal(s->dkey, hdr, e->obuf, plen, e->sbuf) == 0 ? 1 : -1;
    e->forwarded++;
out:
    pthread_mutex_unlock(&e->mu);
    if (hit == 0) return 0;
    if (hit > 0 && gather) {
        ne_run_add(e, &to, n);
        return 1;
    }
    if (hit < 0 || sendto(e->fd, e->sbuf, n, 0, (struct sockaddr *)&to,
                          sizeof to) < 0) {
        pthread_mutex_lock(&e->mu);
        e->send_errors++;
        pthread_mutex_unlock(&e->mu);
    }
    return 1;
}

static void *ne_run(void *arg) {
    NodeEngine *e = arg;
    struct epoll_event evs[2];
    for (;;) {
        int k = epoll_wait(e->ep, evs, 2, -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            break;
        }
        int sock = 0;
        for (int i = 0; i < k; i++) {
            if (evs[i].data.fd == e->stopfd) return NULL;
            if (evs[i].data.fd == e->fd) sock = 1;
        }
        if (!sock) continue;
        for (int reads = 0; reads < NE_BURST; reads++) {
            struct sockaddr_storage from;
            size_t seg = 0;
            ssize_t r = at_recv_gro(e->fd, e->rbuf, NE_RECV, &from, &seg);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                continue; /* ICMP errors reported on the socket, as node_receive */
            }
            size_t n = (size_t)r, off = 0;
            if (seg >= n) seg = 0;
            if (from.ss_family == AF_INET) {
                /* One datagram, or a GRO run (a sender's burst) cut by its segment size: each
                 * forwarded in turn, the rest of the run handed over from the first miss. */
                size_t step = seg ? seg : n;
                while (off < n) {
                    size_t piece = n - off < step ? n - off : step;
                    if (!ne_forward(e, e->rbuf + off, piece, (struct sockaddr_in *)&from,
                                    seg != 0))
                        break;
                    off += piece;
                }
                ne_run_flush(e); /* what was forwarded leaves before anything handed over */
                if (off >= n) continue;
            }
            /* Hand the datagram (or the rest of the run) over with the socket. */
            pthread_mutex_lock(&e->mu);
            memcpy(e->hbuf, e->rbuf + off, n - off);
            e->hlen = n - off;
            e->hseg = seg;
            memset(&e->hfrom, 0, sizeof e->hfrom);
            if (from.ss_family == AF_INET) memcpy(&e->hfrom, &from, sizeof e->hfrom);
            e->has_item = 1;
            e->paused = 1;
            e->handed++;
            epoll_ctl(e->ep, EPOLL_CTL_DEL, e->fd, NULL);
            pthread_mutex_unlock(&e->mu);
            uint64_t one = 1;
            ssize_t w = write(e->wakefd, &one, sizeof one);
            (void)w; /* a full eventfd is already readable */
            break;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ GIL-held side */

static void entry_clear(NeEntry *s) {
    Py_CLEAR(s->okey);
    Py_CLEAR(s->win);
    Py_CLEAR(s->port);
    Py_CLEAR(s->core);
    Py_CLEAR(s->sw);
    Py_CLEAR(s->dkey);
    Py_CLEAR(s->dctr);
    Py_CLEAR(s->dport);
    memset(s, 0, sizeof *s);
}

static int add_max(PyObject *obj, PyObject *name, double v) {
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL) return -1;
    double o = PyFloat_AsDouble(old);
    Py_DECREF(old);
    if (o == -1.0 && PyErr_Occurred()) return -1;
    if (v <= o) return 0;
    PyObject *nv = PyFloat_FromDouble(v);
    int rc = nv ? PyObject_SetAttr(obj, name, nv) : -1;
    Py_XDECREF(nv);
    return rc;
}

static int set_float(PyObject *obj, PyObject *name, double v) {
    PyObject *nv = PyFloat_FromDouble(v);
    int rc = nv ? PyObject_SetAttr(obj, name, nv) : -1;
    Py_XDECREF(nv);
    return rc;
}

/* Write one entry's state back to its Python objects (GIL and mu held). */
static int entry_flush(NeEntry *s) {
    int rc = 0;
    if (s->frames) {
        long long f = (long long)s->frames, bi = (long long)s->bytes_in;
        long long bo = (long long)s->bytes_out;
        if (at_add_attr(s->core, s_datagrams, f) < 0) rc = -1;
        if (s->port != NULL) { /* from a client port: Switch.from_local's counts */
            if (at_add_attr(s->port, s_frames_in, f) < 0 || at_add_attr(s->port, s_bytes_in, bi) < 0)
                rc = -1;
        } else if (at_add_attr(s->sw, s_frames_from_peers, f) < 0) { /* from a peer node */
            rc = -1;
        }
        if (s->dport != NULL) { /* to a client port: deliver's counts */
            if (at_add_attr(s->dport, s_frames_out, f) < 0 ||
                at_add_attr(s->dport, s_bytes_out, bo) < 0)
                rc = -1;
        } else if (at_add_attr(s->sw, s_frames_to_peers, f) < 0) { /* to the peer node */
            rc = -1;
        }
        s->frames = s->bytes_in = s->bytes_out = 0;
    }
    if (s->last_now > 0 && s->port == NULL) {
        /* From a peer: its source MAC's age (Switch.from_peer refreshes fdb_seen). */
        if (add_max(s->sw, s_now, s->last_now) < 0) rc = -1;
        PyObject *seen = PyObject_GetAttr(s->sw, s_fdb_seen);
        PyObject *mac = PyBytes_FromStringAndSize((const char *)s->smac, 6);
        PyObject *at = PyFloat_FromDouble(s->last_now);
        if (seen == NULL || mac == NULL || at == NULL || !PyDict_Check(seen)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Switch.fdb_seen");
            rc = -1;
        } else {
            PyObject *old = PyDict_GetItemWithError(seen, mac); /* borrowed */
            double o = old != NULL ? PyFloat_AsDouble(old) : 0.0;
            if ((o == -1.0 && PyErr_Occurred()) || (old == NULL && PyErr_Occurred()))
                rc = -1;
            else if (s->last_now > o && PyDict_SetItem(seen, mac, at) < 0)
                rc = -1;
        }
        Py_XDECREF(seen);
        Py_XDECREF(mac);
        Py_XDECREF(at);
        s->last_now = 0;
    }
    if (s->last_now > 0) {
        if (add_max(s->port, s_last_seen, s->last_now) < 0 || add_max(s->sw, s_now, s->last_now) < 0)
            rc = -1;
        /* The switch's hot path refreshes fdb_at for the port's current MAC (from_local). */
        PyObject *mac = PyObject_GetAttr(s->port, s_fdb_mac);
        if (mac == NULL) {
            rc = -1;
        } else {
            if (PyBytes_Check(mac) && PyBytes_GET_SIZE(mac) == 6 &&
                memcmp(PyBytes_AS_STRING(mac), s->smac, 6) == 0 &&
                add_max(s->port, s_fdb_at, s->last_now) < 0)
                rc = -1;
            Py_DECREF(mac);
        }
        s->last_now = 0;
    }
    if (s->loaded && s->port != NULL) {
        if (set_float(s->port, s_tokens, s->tokens) < 0 ||
            set_float(s->port, s_bucket_at, s->bucket_at) < 0)
            rc = -1;
    }
    return rc;
}

/* Everything the entries own, back into Python; `release`: Python takes the buckets over
 * (a hand-over; arm() reloads them). 0, or -1 with the first Python error set. */
static int ne_flush(NodeEngine *e, int release) {
    int rc = 0;
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < NE_SLOTS && e->count; i++) {
        NeEntry *s = &e->slots[i];
        if (!s->used) continue;
        if (entry_flush(s) < 0) {
            rc = -1;
            if (type == NULL) PyErr_Fetch(&type, &value, &tb);
            else PyErr_Clear();
        }
        if (release) s->loaded = 0;
    }
    unsigned long long errs = e->send_errors - e->send_errors_folded;
    e->send_errors_folded = e->send_errors;
    pthread_mutex_unlock(&e->mu);
    if (errs && e->udp != NULL && at_add_attr(e->udp, s_send_errors, (long long)errs) < 0) {
        rc = -1;
        if (type == NULL) PyErr_Fetch(&type, &value, &tb);
        else PyErr_Clear();
    }
    if (type != NULL) PyErr_Restore(type, value, tb);
    return rc;
}

static int get_double_attr(PyObject *obj, PyObject *name, double *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}


static PyObject *key_of(PyObject *holder) {
    /* holder.key.fast when it is a C Key (new ref), else NULL with no error. */
    PyObject *key = PyObject_GetAttr(holder, at_names.s_key);
    PyObject *fast = key ? PyObject_GetAttr(key, at_names.s_fast) : NULL;
    Py_XDECREF(key);
    if (fast == NULL || !PyObject_TypeCheck(fast, &AtKey_Type)) {
        Py_XDECREF(fast);
        PyErr_Clear();
        return NULL;
    }
    return fast;
}

int at_engine_note(PyObject *engine, const AtEngineNote *note) {
    if (engine == NULL || !PyObject_TypeCheck(engine, &AtNodeEngine_Type)) return 0;
    NodeEngine *e = (NodeEngine *)engine;
    if (e->slots == NULL || ne_names() < 0) return -1;
    const uint8_t *hdr = note->packet, *frame = note->frame;
    if (frame[0] & 1) return 0; /* never: from_local's unicast branch */
    struct sockaddr_in src, dst;
    if (at_parse_addr4(note->addr, &src) || at_parse_addr4(note->dst_addr, &dst)) return 0;
    PyObject *okey = key_of(note->opener), *dkey = key_of(note->sealer);
    PyObject *cell = PyObject_GetAttr(note->sealer, s_cell);
    PyObject *prefixes = PyObject_GetAttr(note->sealer, at_names.s_prefixes);
    PyObject *dsender = PyObject_GetAttr(note->sealer, at_names.s_sender_id);
    PyErr_Clear();
    PyObject *one = PyLong_FromLong(AT_FRAME), *two = PyLong_FromLong(AT_SUPERFRAME);
    int ok_dict = one && two && prefixes && PyDict_Check(prefixes);
    PyObject *prefix = ok_dict ? PyDict_GetItemWithError(prefixes, one) : NULL;
    PyObject *prefix2 = ok_dict ? PyDict_GetItemWithError(prefixes, two) : NULL;
    Py_XDECREF(one);
    Py_XDECREF(two);
    PyErr_Clear();
    int dst_offload = 1; /* a peer node takes offloaded packets whole */
    if (note->dst != NULL) {
        PyObject *offload = PyObject_GetAttrString(note->dst, "offload");
        dst_offload = offload ? PyObject_IsTrue(offload) : 0;
        Py_XDECREF(offload);
        if (dst_offload < 0) dst_offload = 0;
    }
    PyErr_Clear();
    unsigned long ds = dsender && PyLong_Check(dsender) ? PyLong_AsUnsignedLong(dsender) : 0;
    if (PyErr_Occurred()) {
        PyErr_Clear();
        ds = (unsigned long)UINT32_MAX + 1; /* not a u32: not cached */
    }
    if (okey == NULL || dkey == NULL || cell == NULL || !PyObject_TypeCheck(cell, &AtCounter_Type) ||
        prefix == NULL || !PyBytes_Check(prefix) || PyBytes_GET_SIZE(prefix) != AT_NONCE_AT ||
        prefix2 == NULL || !PyBytes_Check(prefix2) || PyBytes_GET_SIZE(prefix2) != AT_NONCE_AT ||
        dsender == NULL || ds > UINT32_MAX || note->window == NULL ||
        !PyObject_TypeCheck(note->window, &AtWindow_Type))
        goto done; /* not all C objects: this flow stays on node_receive */
    uint32_t key_id = at_be32(hdr + AT_KEY_ID_AT), sender_id = at_be32(hdr + AT_SENDER_AT);
    pthread_mutex_lock(&e->mu);
    NeEntry *s = ne_find(e, hdr, key_id, sender_id, src.sin_addr.s_addr, src.sin_port);
    if (s != NULL && !s->used && e->count >= NE_MAX) {
        e->full++;
        s = NULL;
    }
    if (s != NULL) {
        if (s->used) {
            entry_flush(s); /* the old one's counts are kept */
            PyErr_Clear();
            entry_clear(s);
        } else {
            e->count++;
        }
        s->used = 1;
        s->gen = atomic_load(&ne_generation);
        memcpy(s->netid, hdr, AT_NETWORK_ID_LEN);
        s->key_id = key_id;
        s->sender_id = sender_id;
        s->src_ip = src.sin_addr.s_addr;
        s->src_port = src.sin_port;
        s->okey = (AtKey *)Py_NewRef(okey);
        s->win = (AtWindow *)Py_NewRef(note->window);
        s->port = Py_XNewRef(note->port);
        s->core = Py_NewRef(note->core);
        s->sw = Py_NewRef(note->sw);
        s->rate = note->rate;
        s->burst = note->burst;
        memcpy(s->dmac, frame, 6);
        memcpy(s->smac, frame + 6, 6);
        s->dkey = (AtKey *)Py_NewRef(dkey);
        s->dctr = (AtCounter *)Py_NewRef(cell);
        memcpy(s->prefix, PyBytes_AS_STRING(prefix), AT_NONCE_AT);
        memcpy(s->prefix2, PyBytes_AS_STRING(prefix2), AT_NONCE_AT);
        s->dst_offload = dst_offload;
        s->frag_max = note->fragment_size;
        s->dsender = (uint32_t)ds;
        s->daddr = dst;
        s->dport = Py_XNewRef(note->dst);
    }
    pthread_mutex_unlock(&e->mu);
done:
    Py_XDECREF(okey);
    Py_XDECREF(dkey);
    Py_XDECREF(cell);
    Py_XDECREF(prefixes);
    Py_XDECREF(dsender);
    return 0;
}

/* ------------------------------------------------------------------ the Python type */

static void ne_stop_thread(NodeEngine *e) {
    if (!e->running) return;
    uint64_t one = 1;
    ssize_t w = write(e->stopfd, &one, sizeof one);
    (void)w;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(e->thread, NULL);
    Py_END_ALLOW_THREADS
    e->running = 0;
}

static void ne_dealloc(NodeEngine *e) {
    ne_stop_thread(e);
    if (e->slots != NULL) {
        for (size_t i = 0; i < NE_SLOTS; i++)
            if (e->slots[i].used) entry_clear(&e->slots[i]);
        PyMem_RawFree(e->slots);
    }
    if (e->ep >= 0) close(e->ep);
    if (e->stopfd >= 0) close(e->stopfd);
    if (e->wakefd >= 0) close(e->wakefd);
    PyMem_RawFree(e->hbuf);
    PyMem_RawFree(e->rbuf);
    PyMem_RawFree(e->obuf);
    PyMem_RawFree(e->sbuf);
    PyMem_RawFree(e->gbuf);
    if (e->mu_ready) pthread_mutex_destroy(&e->mu);
    Py_CLEAR(e->udp);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *ne_new(PyTypeObject *type, PyObject *Py_UNUSED(a), PyObject *Py_UNUSED(k)) {
    NodeEngine *e = (NodeEngine *)type->tp_alloc(type, 0);
    if (e == NULL) return NULL;
    e->fd = e->ep = e->stopfd = e->wakefd = -1;
    return (PyObject *)e;
}

static int ne_init(NodeEngine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "udp", NULL};
    int fd;
    PyObject *udp = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|O", kwlist, &fd, &udp)) return -1;
    if (e->slots != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a NodeEngine is set up once");
        return -1;
    }
    if (ne_names() < 0) return -1;
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_mutex_init failed");
        return -1;
    }
    e->mu_ready = 1;
    e->fd = fd;
    e->slots = PyMem_RawCalloc(NE_SLOTS, sizeof(NeEntry));
    e->hbuf = PyMem_RawMalloc(NE_RECV + 1);
    e->rbuf = PyMem_RawMalloc(NE_RECV + 1);
    e->obuf = PyMem_RawMalloc(NE_RECV + 1);
    e->sbuf = PyMem_RawMalloc(NE_RECV + AT_OVERHEAD + 1);
    e->gbuf = PyMem_RawMalloc(NE_GSO_BYTES + NE_RECV + AT_OVERHEAD);
    if (!e->slots || !e->hbuf || !e->rbuf || !e->obuf || !e->sbuf || !e->gbuf) {
        PyErr_NoMemory();
        return -1;
    }
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    e->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    e->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->ep < 0 || e->stopfd < 0 || e->wakefd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = e->stopfd};
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, e->stopfd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    e->paused = 1; /* start() arms it */
    if (udp != Py_None) e->udp = Py_NewRef(udp);
    return 0;
}

static int ne_ready(NodeEngine *e) {
    if (e->slots != NULL) return 1;
    PyErr_SetString(PyExc_ValueError, "this NodeEngine was never initialised");
    return 0;
}

/* Back into the epoll set, with the entries of the current generation reloaded (GIL held). */
static int ne_arm_locked(NodeEngine *e) {
    uint64_t gen = atomic_load(&ne_generation);
    int rc = 0;
    for (size_t i = 0; i < NE_SLOTS && e->count; i++) {
        NeEntry *s = &e->slots[i];
        if (!s->used) continue;
        if (s->gen != gen) { /* something it depends on changed */
            if (entry_flush(s) < 0) PyErr_Clear();
            entry_clear(s);
            e->count--;
            continue;
        }
        if (!s->loaded && s->port == NULL) {
            s->loaded = 1; /* from a peer node: no bucket */
        } else if (!s->loaded) {
            if (get_double_attr(s->port, s_tokens, &s->tokens) < 0 ||
                get_double_attr(s->port, s_bucket_at, &s->bucket_at) < 0) {
                PyErr_Clear();
                entry_clear(s);
                e->count--;
                continue;
            }
            s->loaded = 1;
        }
    }
    if (e->paused && e->running) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = e->fd};
        if (epoll_ctl(e->ep, EPOLL_CTL_ADD, e->fd, &ev) < 0 && errno != EEXIST) rc = -1;
        else e->paused = 0;
    }
    return rc;
}

static PyObject *ne_arm(NodeEngine *e, PyObject *Py_UNUSED(unused)) {
    if (!ne_ready(e)) return NULL;
    pthread_mutex_lock(&e->mu);
    int rc = ne_arm_locked(e);
    pthread_mutex_unlock(&e->mu);
    if (rc < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *ne_start(NodeEngine *e, PyObject *Py_UNUSED(unused)) {
    if (!ne_ready(e)) return NULL;
    if (e->running) Py_RETURN_NONE;
    uint64_t drain;
    while (read(e->stopfd, &drain, sizeof drain) > 0) {
    }
    int err = pthread_create(&e->thread, NULL, ne_run, e);
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    e->running = 1;
    return ne_arm(e, NULL);
}

static PyObject *ne_stop(NodeEngine *e, PyObject *Py_UNUSED(unused)) {
    if (!ne_ready(e)) return NULL;
    ne_stop_thread(e);
    pthread_mutex_lock(&e->mu);
    if (!e->paused) epoll_ctl(e->ep, EPOLL_CTL_DEL, e->fd, NULL);
    e->paused = 1;
    pthread_mutex_unlock(&e->mu);
    if (ne_flush(e, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *ne_take(NodeEngine *e, PyObject *Py_UNUSED(unused)) {
    /* The handed-over datagram as (data, (host, port), segment), or None; the cache flushed
     * first: Python's steps on it and on the drain see every count and bucket. */
    if (!ne_ready(e)) return NULL;
    uint64_t drain;
    while (read(e->wakefd, &drain, sizeof drain) > 0) {
    }
    if (ne_flush(e, 1) < 0) return NULL;
    PyObject *item = NULL;
    pthread_mutex_lock(&e->mu);
    if (e->has_item) {
        char host[INET_ADDRSTRLEN] = "0.0.0.0";
        inet_ntop(AF_INET, &e->hfrom.sin_addr, host, sizeof host);
        item = Py_BuildValue("(y#(si)n)", (const char *)e->hbuf, (Py_ssize_t)e->hlen, host,
                             (int)ntohs(e->hfrom.sin_port), (Py_ssize_t)e->hseg);
        e->has_item = 0;
    }
    pthread_mutex_unlock(&e->mu);
    if (item == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return item;
}

static PyObject *ne_sync(NodeEngine *e, PyObject *Py_UNUSED(unused)) {
    if (!ne_ready(e)) return NULL;
    if (ne_flush(e, 0) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *ne_fileno(NodeEngine *e, PyObject *Py_UNUSED(unused)) {
    if (!ne_ready(e)) return NULL;
    return PyLong_FromLong(e->wakefd);
}

static PyObject *ne_counters(NodeEngine *e, PyObject *Py_UNUSED(unused)) {
    if (!ne_ready(e)) return NULL;
    pthread_mutex_lock(&e->mu);
    unsigned long long f = e->forwarded, h = e->handed, full = e->full, s = e->send_errors;
    size_t n = e->count;
    pthread_mutex_unlock(&e->mu);
    return Py_BuildValue("{sKsKsnsKsKsOsK}", "engine", f, "handed", h, "entries", (Py_ssize_t)n,
                         "full", full, "send_errors", s, "running",
                         e->running ? Py_True : Py_False, "generation",
                         (unsigned long long)atomic_load(&ne_generation));
}

static PyMethodDef ne_methods[] = {
    {"start", (PyCFunction)ne_start, METH_NOARGS, "start(): run the thread and watch the socket"},
    {"stop", (PyCFunction)ne_stop, METH_NOARGS,
     "stop(): join the thread (idempotent), the socket left alone, the cache flushed"},
    {"take", (PyCFunction)ne_take, METH_NOARGS,
     "take() -> (data, addr, segment) | None: the handed-over datagram, the cache flushed; the "
     "socket stays Python's until arm()"},
    {"arm", (PyCFunction)ne_arm, METH_NOARGS,
     "arm(): the socket back to the thread (after Python drained it), entries reloaded"},
    {"sync", (PyCFunction)ne_sync, METH_NOARGS,
     "sync(): write the counts, buckets and times the cache holds back to the Python objects"},
    {"fileno", (PyCFunction)ne_fileno, METH_NOARGS,
     "fileno() -> the eventfd that is readable when a datagram is handed over"},
    {"counters", (PyCFunction)ne_counters, METH_NOARGS,
     "counters() -> {engine, handed, entries, full, send_errors, running, generation}"},
    {NULL}};

PyTypeObject AtNodeEngine_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "atenet._fast.NodeEngine",
    .tp_basicsize = sizeof(NodeEngine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NodeEngine(fd, udp=None): the node's unicast hop in a GIL-free thread "
              "(csrc/fast/nodeengine.c)",
    .tp_new = ne_new,
    .tp_init = (initproc)ne_init,
    .tp_dealloc = (destructor)ne_dealloc,
    .tp_methods = ne_methods,
};

static PyObject *node_changed(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(unused)) {
    atomic_fetch_add(&ne_generation, 1);
    Py_RETURN_NONE;
}

static PyObject *node_generation(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(unused)) {
    return PyLong_FromUnsignedLongLong(atomic_load(&ne_generation));
}

PyMethodDef at_engine_methods[] = {
    {"node_changed", node_changed, METH_NOARGS,
     "node_changed(): something a NodeEngine entry depends on changed (ports, openers, the MAC "
     "table, switch settings): every cached flow is dropped before its next datagram"},
    {"node_generation", node_generation, METH_NOARGS, "node_generation() -> the current one"},
    {NULL}};
