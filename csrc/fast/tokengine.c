/* tok connect's two hops without the GIL: atenet._fast.TokEngine (see fast.h, docs/fastpath.md).
 *
 * Why: an idle ping's hop through tok.c still wakes the event loop, runs a Python callback and
 * touches ~50 Python objects; cold, that is most of the hop's time. Here a pthread blocks in
 * epoll_wait on the TAP fd, the UDP socket and a stop eventfd, and does the common case of both
 * hops in C on C data only (the key, the sealer's counter cell, the replay windows: strong refs
 * to C objects taken under the GIL at set-up), never taking the GIL:
 *
 * - TAP → node: frames (no vnet header), or with one plain frames and small offloaded packets
 *   that fit one datagram when the node takes them (tok_tap_to_udp's rules), sealed
 *   (TYPE_FRAME / TYPE_SUPERFRAME) and sent: the first of a wake-up at once with one sendto,
 *   the rest of a burst as UDP GSO runs (as tok_tap_to_udp), until the TAP is empty.
 * - node → TAP: a datagram from the node's address, or a GRO run of them (a burst the node
 *   sent as a UDP GSO run) cut into its datagrams, each a frame or (offloads on) a super-frame
 *   for our network and key from a sender that has a C replay window, opened and written to
 *   the TAP (tok_udp_to_tap's checks in its order, the same drop counter names); then the TAP
 *   is read at once (the kernel's answer is usually queued by then), here too.
 *
 * Everything else — an offloaded packet needing fragments or segmenting, a fragment, a control
 * message, a sender's first packet, a datagram from another address, a DHCP reply, an error —
 * is handed over, with the rest of its GRO run behind it: the thread puts what it read into
 * that fd's one-slot hand-over, stops watching the fd and writes the eventfd the asyncio loop
 * watches. Python runs its existing path on the item, drains the fd
 * with the existing GIL-held code until EAGAIN and re-arms the engine on it (resume_tap /
 * resume_udp), so the order per fd is kept and bulk traffic runs exactly as before.
 *
 * Counters are kept in C (under the engine's mutex) and folded into the Python objects by
 * sync() at every hand-over and whenever Python reports state.
 */
#include "fast.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>


/* The drop counters this engine can bump: ClientCore.drops' names for the same checks. */
enum { D_SHORT, D_VERSION, D_TYPE, D_WRONG_NETWORK, D_KEY, D_REPLAY, D_AUTH, N_DROPS };
static const char *const DROP_NAMES[N_DROPS] = {"short", "version", "type", "wrong_network",
                                                "key", "replay", "auth"};

typedef struct {
    /* TapDevice.counters' fields and UdpSocket.send_errors: folded into them by sync(). */
    long long rx_frames, rx_bytes, rx_batches, tx_frames, tx_bytes, tx_dropped, tx_errors;
    long long send_errors;
    long long gso_off; /* UDP GSO refused here: Python's UdpSocket.gso goes off too */
    long long drops[N_DROPS];
    /* The engine's own: what it carried, and how often it handed an fd over. */
    long long sealed, opened, tap_handovers, udp_handovers;
} Counts;

/* What a hand-over slot holds. */
#define K_PACKET 1 /* TAP: one read (vnet header included) for ClientCore.seal_packet/seal_frame */
#define K_RAW 2    /* UDP: a datagram or what is left of a GRO run from it on, unopened, for the
                      reassembler + ClientCore.receive (exactly as a fresh read) */
#define K_FRAME 3  /* UDP: a frame opened here that is a DHCP reply: Connection._deliver; then
                      the rest of its GRO run, if any (rest) */
#define K_ERROR 4  /* either: the read or TAP write failed with this errno (Python raises); for
                      a TAP write, the rest of the datagram's GRO run, if any (rest) */

typedef struct {
    int handed; /* the fd is Python's until it resumes the engine on it */
    int taken;  /* take() has returned the item */
    int kind;
    int err;
    uint8_t *buf;
    size_t len, segment;
    struct sockaddr_storage from;
    /* K_FRAME / K_ERROR from the socket: the datagrams of the run after the one handed over,
     * unopened (rest_len 0: none), for the reassembler like a K_RAW item (UDP slot only). */
    uint8_t *rest;
    size_t rest_len, rest_segment;
} Slot;

typedef struct {
    uint32_t sender;
    AtWindow *window; /* strong ref */
} Sender;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu; /* the slots, counters, node address and last_heard */
    int ready;          /* __init__ completed: fds, buffers and refs are set */
    int running;        /* the thread was started and not joined */
    pthread_t thread;
    int tap_fd, sock_fd, epfd, stop_fd, ho_fd;
    int vnet, offload, node_offload;
    struct sockaddr_in node;
    uint8_t network_id[AT_NETWORK_ID_LEN];
    uint32_t key_id, sender_id;
    uint8_t prefix_frame[AT_NONCE_AT], prefix_super[AT_NONCE_AT];
    AtKey *seal_key, *open_key;
    AtCounter *counter;
    Sender *senders; /* replaced only while the UDP fd is Python's (or the thread is stopped) */
    Py_ssize_t nsenders;
    Slot tap_slot, udp_slot;
    Counts pending, total;
    double last_heard;
    size_t read_size, recv_size, fragment_size, gso_bytes;
    long gso_segments;
    int gso; /* UDP_SEGMENT works (the thread's own; off for good after a refusal) */
    uint8_t *tap_in, *tap_out, *udp_in, *udp_plain; /* the thread's buffers */
} TokEngine;

static const uint8_t ZERO_VNET[AT_VNET_HDR_LEN];

static long read_const(const char *module, const char *name) {
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) return -1;
    PyObject *v = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    if (v == NULL) return -1;
    long out = PyLong_AsLong(v);
    Py_DECREF(v);
    return out;
}

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void counts_add(Counts *to, const Counts *d) {
    long long *a = (long long *)to;
    const long long *b = (const long long *)d;
    for (size_t i = 0; i < sizeof(Counts) / sizeof(long long); i++) a[i] += b[i];
}

/* Fold a wake-up's counts into pending (for sync) and total (for .counters), once per wake. */
static void engine_count(TokEngine *e, const Counts *d, double heard) {
    pthread_mutex_lock(&e->mu);
    counts_add(&e->pending, d);
    counts_add(&e->total, d);
    if (heard > e->last_heard) e->last_heard = heard;
    pthread_mutex_unlock(&e->mu);
}

static int slot_handed(TokEngine *e, Slot *s) {
    pthread_mutex_lock(&e->mu);
    int h = s->handed;
    pthread_mutex_unlock(&e->mu);
    return h;
}

/* Give `fd` and the item in `s` to Python: stop watching the fd, mark the slot, wake the loop
 * (in that order: Python re-arms only after it saw the slot, so its EPOLL_CTL_ADD comes after
 * this EPOLL_CTL_DEL). */
static void hand_over(TokEngine *e, Slot *s, int fd, int kind, Counts *d) {
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
    pthread_mutex_lock(&e->mu);
    s->kind = kind;
    s->taken = 0;
    s->handed = 1;
    pthread_mutex_unlock(&e->mu);
    if (s == &e->tap_slot)
        d->tap_handovers++;
    else
        d->udp_handovers++;
    uint64_t one = 1;
    while (write(e->ho_fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------ TAP → seal → UDP */

/* Sealed datagrams for the node waiting in tap_out: a UDP GSO run being built (tok.c's Run,
 * the rules of UdpSocket._send_runs). */
typedef struct {
    size_t len;  /* bytes in tap_out */
    size_t size; /* the run's segment size (its first datagram's) */
    long count;
    int closed; /* a shorter datagram ended it */
} Run;

static void send_one(TokEngine *e, const struct sockaddr_in *node, const uint8_t *buf,
                     size_t len, Counts *d) {
    ssize_t sent;
    do {
        sent = sendto(e->sock_fd, buf, len, 0, (const struct sockaddr *)node, sizeof *node);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) d->send_errors++;
}

static void run_flush(TokEngine *e, Run *r, const struct sockaddr_in *node, Counts *d) {
    long count = r->count;
    size_t len = r->len;
    if (count == 0) return;
    r->count = 0;
    r->closed = 0;
    r->len = 0;
    if (count == 1) {
        send_one(e, node, e->tap_out, len, d);
        return;
    }
    if (e->gso) {
        int rc = at_send_gso(e->sock_fd, e->tap_out, len, r->size, node, sizeof *node);
        if (rc == 0) return;
        if (rc < 0) {
            d->send_errors += count;
            return;
        }
        e->gso = 0; /* no UDP GSO here: one datagram each, from now on */
        d->gso_off = 1;
    }
    for (size_t at = 0; at < len; at += r->size) {
        size_t n = len - at < r->size ? len - at : r->size;
        send_one(e, node, e->tap_out + at, n, d);
    }
}

/* Make room for a datagram of `len` bytes: flush unless it extends the run. */
static void run_room(TokEngine *e, Run *r, size_t len, const struct sockaddr_in *node,
                     Counts *d) {
    if (r->count == 0) return;
    if (!e->gso || r->closed || r->size > e->fragment_size || len > r->size ||
        r->len + len > e->gso_bytes || r->count >= e->gso_segments)
        run_flush(e, r, node, d);
}

#define TAP_BUDGET 256 /* frames per wake-up before the socket (and stop) get their turn */

/* Read the TAP until it is empty (or TAP_BUDGET frames): the first frame leaves at once (an
 * idle ping must not wait for the read that finds the queue empty), the others of a burst as
 * UDP GSO runs, as tok_tap_to_udp sends them. A packet it does not take is handed over after
 * everything before it left. */
static void tap_wake(TokEngine *e) {
    if (slot_handed(e, &e->tap_slot)) return;
    struct sockaddr_in node;
    int node_offload;
    pthread_mutex_lock(&e->mu);
    node = e->node;
    node_offload = e->node_offload;
    pthread_mutex_unlock(&e->mu);
    Counts d = {0};
    Run run = {0};
    long frames = 0;
    uint8_t *in = e->tap_in;
    while (frames < TAP_BUDGET) {
        ssize_t n = read(e->tap_fd, in, e->read_size);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                run_flush(e, &run, &node, &d);
                e->tap_slot.err = errno;
                hand_over(e, &e->tap_slot, e->tap_fd, K_ERROR, &d);
            }
            break;
        }
        frames++;
        d.rx_frames++;
        d.rx_bytes += n;
        const uint8_t *payload = in;
        size_t plen = (size_t)n;
        int ptype = AT_FRAME, common = 1;
        if (e->vnet) {
            if (n < AT_VNET_HDR_LEN) {
                common = 0;
            } else if (in[1] || (in[0] & 1)) { /* offloaded: whole, when it fits a datagram */
                common = node_offload && (size_t)n + AT_OVERHEAD <= e->fragment_size;
                ptype = AT_SUPERFRAME;
            } else {
                payload = in + AT_VNET_HDR_LEN;
                plen = (size_t)n - AT_VNET_HDR_LEN;
            }
        }
        uint64_t counter = 0;
        if (common && at_counter_take(e->counter, &counter) < 0) common = 0; /* spent: Sealer */
        if (!common) {
            run_flush(e, &run, &node, &d); /* what came before it leaves first */
            memcpy(e->tap_slot.buf, in, (size_t)n);
            e->tap_slot.len = (size_t)n;
            hand_over(e, &e->tap_slot, e->tap_fd, K_PACKET, &d);
            break;
        }
        uint8_t hdr[AT_HEADER_LEN];
        memcpy(hdr, ptype == AT_FRAME ? e->prefix_frame : e->prefix_super, AT_NONCE_AT);
        at_put_be32(hdr + AT_SENDER_AT, e->sender_id);
        at_put_be64(hdr + AT_COUNTER_AT, counter);
        size_t sealed = plen + AT_OVERHEAD;
        run_room(e, &run, sealed, &node, &d);
        if (at_seal(e->seal_key, hdr, payload, plen, e->tap_out + run.len) < 0) {
            d.send_errors++; /* OpenSSL failed: lost like a datagram the kernel refused */
            continue;
        }
        if (run.count == 0)
            run.size = sealed;
        else if (sealed < run.size)
            run.closed = 1;
        run.count++;
        run.len += sealed;
        d.sealed++;
        if (frames == 1 || !e->gso) run_flush(e, &run, &node, &d);
    }
    run_flush(e, &run, &node, &d);
    if (frames) d.rx_batches++;
    engine_count(e, &d, 0.0);
}

/* ------------------------------------------------------------------ UDP → open → TAP */

/* wire/dhcp.py is_dhcp_reply_frame (as tok.c). */
static int is_dhcp_reply(const uint8_t *f, size_t len) {
    if (len < 42 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 17) return 0;
    size_t ihl = (size_t)(f[14] & 0x0F) * 4;
    if (18 + ihl > len) return 0;
    return f[14 + ihl] == 0 && f[15 + ihl] == 0x43 && f[16 + ihl] == 0 && f[17 + ihl] == 0x44;
}

static AtWindow *find_window(TokEngine *e, uint32_t sender) {
    for (Py_ssize_t i = 0; i < e->nsenders; i++)
        if (e->senders[i].sender == sender) return e->senders[i].window;
    return NULL;
}

#define RX_DONE 0  /* written, or dropped and counted */
#define RX_WROTE 1 /* written to the TAP */
#define RX_BACK 2  /* the datagram is Python's (K_RAW) */
#define RX_DHCP 3  /* opened; the frame is Python's (K_FRAME), in udp_plain */
#define RX_ERROR 4 /* the TAP write failed: errno */

/* TapDevice._write's outcomes: RX_WROTE, RX_DONE (a full queue: dropped; a refused frame: an
 * error, both counted) or RX_ERROR (anything else; EBADFD: the device is gone). */
static int tap_write(TokEngine *e, const struct iovec *iov, int n, long long nbytes, Counts *d) {
    for (;;) {
        if (writev(e->tap_fd, iov, n) >= 0) {
            d->tx_frames++;
            d->tx_bytes += nbytes;
            return RX_WROTE;
        }
        int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
            d->tx_dropped++;
            return RX_DONE;
        }
        if (err == EINVAL || err == EIO || err == EMSGSIZE || err == EFAULT) {
            d->tx_errors++;
            return RX_DONE;
        }
        e->udp_slot.err = err;
        return RX_ERROR;
    }
}

/* ClientCore.receive's common case and the TAP write after it (tok.c's rx_one, same order). */
static int rx_one(TokEngine *e, const uint8_t *p, size_t len, Counts *d, double *heard) {
    if (len > AT_TYPE_AT && p[AT_TYPE_AT] == AT_FRAGMENT) return RX_BACK;
    if (len < AT_OVERHEAD) return d->drops[D_SHORT]++, RX_DONE;
    if (p[AT_VERSION_AT] != AT_VERSION) return d->drops[D_VERSION]++, RX_DONE;
    int ptype = p[AT_TYPE_AT];
    if (ptype != AT_FRAME && ptype != AT_SUPERFRAME && ptype != AT_CONTROL)
        return d->drops[D_TYPE]++, RX_DONE;
    if (memcmp(p, e->network_id, AT_NETWORK_ID_LEN) != 0)
        return d->drops[D_WRONG_NETWORK]++, RX_DONE;
    if (at_be32(p + AT_KEY_ID_AT) != e->key_id) return d->drops[D_KEY]++, RX_DONE;
    if (ptype == AT_CONTROL || (ptype == AT_SUPERFRAME && !(e->offload && e->vnet)))
        return RX_BACK;
    AtWindow *w = find_window(e, at_be32(p + AT_SENDER_AT));
    if (w == NULL) return RX_BACK; /* a sender's first packet: Opener.open makes its window */
    uint64_t counter = at_be64(p + AT_COUNTER_AT);
    /* Opener.open's order: replay (before any AES time), auth, replay again when marking. The
     * nonce is the header's own sender and counter, the ones looked up: no mismatch possible. */
    if (!at_window_check(w, counter)) return d->drops[D_REPLAY]++, RX_DONE;
    if (at_open(e->open_key, p, len, e->udp_plain) < 0) return d->drops[D_AUTH]++, RX_DONE;
    if (!at_window_update(w, counter)) return d->drops[D_REPLAY]++, RX_DONE;
    *heard = wall_now();
    d->opened++;
    size_t plen = len - AT_OVERHEAD;
    struct iovec iov[2];
    if (ptype == AT_SUPERFRAME) { /* TapDevice.write_packet: as it is */
        iov[0].iov_base = e->udp_plain;
        iov[0].iov_len = plen;
        return tap_write(e, iov, 1, (long long)plen - AT_VNET_HDR_LEN, d);
    }
    if (is_dhcp_reply(e->udp_plain, plen)) {
        e->udp_slot.len = plen; /* Connection._deliver: the DHCP client's or the kernel's */
        return RX_DHCP;
    }
    int n = 0;
    if (e->vnet) {
        iov[n].iov_base = (void *)ZERO_VNET;
        iov[n++].iov_len = AT_VNET_HDR_LEN;
    }
    iov[n].iov_base = e->udp_plain;
    iov[n++].iov_len = plen;
    return tap_write(e, iov, n, (long long)plen, d);
}

/* Datagrams per wake-up before the TAP (and stop) get their turn. Counted in datagrams, not
 * recvmsg calls: a GRO run holds up to 64, so 64 reads could be 4,096 datagrams and keep the
 * TAP (the answers) and stop() waiting that long. A run is always finished once read (its
 * bytes are only in udp_in), so a wake-up may go over by one run at most. */
#define UDP_BUDGET 64

/* Keep what follows `at + piece` in a run of `len` bytes cut every `step` as the slot's rest
 * (after a datagram that was opened: a DHCP reply, or one the TAP refused). */
static void keep_rest(Slot *s, const uint8_t *in, size_t len, size_t at, size_t piece,
                      size_t step) {
    size_t from = at + piece;
    s->rest_len = from < len ? len - from : 0;
    s->rest_segment = s->rest_len > step ? step : 0;
    if (s->rest_len) memcpy(s->rest, in + from, s->rest_len);
}

static void udp_wake(TokEngine *e) {
    if (slot_handed(e, &e->udp_slot)) return;
    struct sockaddr_in node;
    pthread_mutex_lock(&e->mu);
    node = e->node;
    pthread_mutex_unlock(&e->mu);
    Slot *s = &e->udp_slot;
    long datagrams = 0;
    while (datagrams < UDP_BUDGET) {
        Counts d = {0};
        double heard = 0.0;
        size_t segment = 0;
        ssize_t n = at_recv_gro(e->sock_fd, e->udp_in, e->recv_size, &s->from, &segment);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            datagrams++; /* e.g. an ICMP error reported on the socket: not ours to stop on */
            continue;
        }
        size_t len = (size_t)n;
        /* One datagram, or a GRO run cut every `segment` bytes (the last piece may be shorter),
         * each datagram taken in turn as tok_udp_to_tap does; an empty datagram is one piece. */
        size_t step = segment && segment < len ? segment : len;
        const struct sockaddr_in *from = (const struct sockaddr_in *)&s->from;
        int rc = RX_BACK, wrote = 0;
        size_t at = 0, piece = len;
        if (from->sin_family == AF_INET && from->sin_port == node.sin_port &&
            from->sin_addr.s_addr == node.sin_addr.s_addr) { /* else the pure path: all of it */
            for (;;) {
                piece = len - at < step ? len - at : step;
                rc = rx_one(e, e->udp_in + at, piece, &d, &heard);
                datagrams++;
                wrote |= rc == RX_WROTE;
                if (rc >= RX_BACK || (at += piece) >= len) break;
            }
        } else {
            datagrams++;
        }
        if (rc == RX_BACK) {
            /* This datagram, unopened, and the rest of its run: fed to the reassembler as a
             * fresh read (segment 0 when one datagram is left). */
            s->len = len - at;
            s->segment = s->len > step ? step : 0;
            s->rest_len = 0;
            memcpy(s->buf, e->udp_in + at, s->len);
            hand_over(e, s, e->sock_fd, K_RAW, &d);
        } else if (rc == RX_DHCP) {
            /* Opened (its window marked): the frame, then the rest of the run unopened. */
            memcpy(s->buf, e->udp_plain, s->len);
            keep_rest(s, e->udp_in, len, at, piece, step);
            hand_over(e, s, e->sock_fd, K_FRAME, &d);
        } else if (rc == RX_ERROR) {
            /* Opened, the TAP refused it: the error, and the rest of the run not lost. */
            keep_rest(s, e->udp_in, len, at, piece, step);
            hand_over(e, s, e->sock_fd, K_ERROR, &d);
        }
        engine_count(e, &d, heard);
        if (wrote) tap_wake(e); /* the kernel's answer is usually queued by now */
        if (rc >= RX_BACK) break;
    }
}

/* ------------------------------------------------------------------ the thread */

static void *engine_main(void *arg) {
    TokEngine *e = arg;
    struct epoll_event evs[4];
    for (;;) {
        int n = epoll_wait(e->epfd, evs, 4, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            return NULL; /* cannot happen with a valid epfd; stop() still joins */
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == e->stop_fd) return NULL;
            if (fd == e->sock_fd)
                udp_wake(e);
            else if (fd == e->tap_fd)
                tap_wake(e);
        }
    }
}

static int watch(TokEngine *e, int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) == 0 || errno == EEXIST) return 0;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* ------------------------------------------------------------------ Python type */

static int set_node(TokEngine *e, Py_buffer *sa, int node_offload) {
    struct sockaddr_in sin;
    if (sa->len != (Py_ssize_t)sizeof sin) {
        PyErr_SetString(PyExc_ValueError, "not an IPv4 sockaddr from tok_sockaddr");
        return -1;
    }
    memcpy(&sin, sa->buf, sizeof sin);
    if (sin.sin_family != AF_INET) {
        PyErr_SetString(PyExc_ValueError, "not an IPv4 sockaddr from tok_sockaddr");
        return -1;
    }
    pthread_mutex_lock(&e->mu);
    e->node = sin;
    e->node_offload = node_offload;
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static int check_prefix(Py_buffer *b, const uint8_t *network_id, int ptype, uint32_t key_id) {
    const uint8_t *p = b->buf;
    if (b->len != AT_NONCE_AT || memcmp(p, network_id, AT_NETWORK_ID_LEN) != 0 ||
        p[AT_VERSION_AT] != AT_VERSION || p[AT_TYPE_AT] != ptype ||
        at_be32(p + AT_KEY_ID_AT) != key_id) {
        PyErr_SetString(PyExc_ValueError, "a sealer prefix does not match the network and key");
        return -1;
    }
    return 0;
}

static void engine_join(TokEngine *e) {
    if (!e->running) return;
    uint64_t one = 1;
    while (write(e->stop_fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(e->thread, NULL);
    Py_END_ALLOW_THREADS
    e->running = 0;
}

static void clear_senders(TokEngine *e) {
    for (Py_ssize_t i = 0; i < e->nsenders; i++) Py_DECREF((PyObject *)e->senders[i].window);
    free(e->senders);
    e->senders = NULL;
    e->nsenders = 0;
}

static void engine_dealloc(TokEngine *e) {
    engine_join(e);
    clear_senders(e);
    Py_XDECREF((PyObject *)e->seal_key);
    Py_XDECREF((PyObject *)e->open_key);
    Py_XDECREF((PyObject *)e->counter);
    int fds[3] = {e->epfd, e->stop_fd, e->ho_fd}; /* the engine's own; TAP and socket are not */
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(e->tap_in);
    free(e->tap_out);
    free(e->udp_in);
    free(e->udp_plain);
    free(e->tap_slot.buf);
    free(e->udp_slot.buf);
    free(e->udp_slot.rest);
    if (e->ready >= 0) pthread_mutex_destroy(&e->mu);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *engine_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
                            PyObject *Py_UNUSED(kwds)) {
    TokEngine *e = (TokEngine *)type->tp_alloc(type, 0);
    if (e == NULL) return NULL;
    e->epfd = e->stop_fd = e->ho_fd = -1;
    e->tap_fd = e->sock_fd = -1;
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        e->ready = -1;
        Py_DECREF(e);
        PyErr_SetString(PyExc_RuntimeError, "cannot create a mutex");
        return NULL;
    }
    return (PyObject *)e;
}

static int engine_init(TokEngine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tap_fd",   "sock_fd",  "vnet",      "offload",   "network_id",
                             "key_id",   "seal_key", "counter",   "prefix_frame",
                             "prefix_super", "sender_id", "open_key", "sockaddr",
                             "node_offload", "gso", NULL};
    int tap_fd, sock_fd, vnet, offload, node_offload, gso = 1;
    unsigned long key_id, sender_id;
    PyObject *seal_key, *counter, *open_key;
    Py_buffer net = {0}, pf = {0}, ps = {0}, sa = {0};
    if (e->ready) {
        PyErr_SetString(PyExc_RuntimeError, "a TokEngine is set up once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iippy*kO!O!y*y*kO!y*p|p", kwlist, &tap_fd,
                                     &sock_fd, &vnet, &offload, &net, &key_id, &AtKey_Type,
                                     &seal_key, &AtCounter_Type, &counter, &pf, &ps, &sender_id,
                                     &AtKey_Type, &open_key, &sa, &node_offload, &gso))
        return -1;
    int rc = -1;
    if (net.len != AT_NETWORK_ID_LEN || key_id > UINT32_MAX || sender_id > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a network id is 16 bytes, key and sender ids u32");
        goto done;
    }
    if (check_prefix(&pf, net.buf, AT_FRAME, key_id) < 0 ||
        check_prefix(&ps, net.buf, AT_SUPERFRAME, key_id) < 0 || set_node(e, &sa, node_offload) < 0)
        goto done;
    if (((AtKey *)seal_key)->enc == NULL || ((AtKey *)open_key)->dec == NULL) {
        PyErr_SetString(PyExc_ValueError, "a Key was never initialised");
        goto done;
    }
    long read_size = read_const("atenet.transport.tap", "READ_SIZE");
    long recv_size = read_size < 0 ? -1 : read_const("atenet.transport.udp", "RECV_SIZE");
    long fragment_size =
        recv_size < 0 ? -1 : read_const("atenet.overlay.fragment", "FRAGMENT_SIZE");
    long gso_bytes = fragment_size < 0 ? -1 : read_const("atenet.transport.udp", "GSO_BYTES");
    long gso_segments =
        gso_bytes < 0 ? -1 : read_const("atenet.transport.udp", "GSO_SEGMENTS");
    if (gso_segments < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "atenet._fast: unexpected packet sizes");
        goto done;
    }
    if (read_size < AT_VNET_HDR_LEN || read_size > AT_MAX_PACKET || recv_size < AT_OVERHEAD ||
        recv_size > AT_MAX_PACKET || fragment_size < AT_OVERHEAD || gso_bytes < 1 ||
        gso_segments < 1) {
        PyErr_SetString(PyExc_RuntimeError, "atenet._fast: unexpected packet sizes");
        goto done;
    }
    e->read_size = (size_t)read_size;
    e->recv_size = (size_t)recv_size;
    e->fragment_size = (size_t)fragment_size;
    e->gso_bytes = (size_t)gso_bytes;
    e->gso_segments = gso_segments;
    e->gso = gso;
    e->tap_in = malloc(e->read_size);
    /* A run (at most gso_bytes) plus one more datagram of the largest size (as tok.c). */
    e->tap_out = malloc(e->gso_bytes + e->read_size + AT_OVERHEAD);
    e->udp_in = malloc(e->recv_size);
    e->udp_plain = malloc(e->recv_size);
    e->tap_slot.buf = malloc(e->read_size);
    e->udp_slot.buf = malloc(e->recv_size);
    e->udp_slot.rest = malloc(e->recv_size);
    if (!e->tap_in || !e->tap_out || !e->udp_in || !e->udp_plain || !e->tap_slot.buf ||
        !e->udp_slot.buf || !e->udp_slot.rest) {
        PyErr_NoMemory();
        goto done;
    }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    e->ho_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->epfd < 0 || e->stop_fd < 0 || e->ho_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    e->tap_fd = tap_fd;
    e->sock_fd = sock_fd;
    if (watch(e, e->stop_fd) < 0 || watch(e, tap_fd) < 0 || watch(e, sock_fd) < 0) goto done;
    e->vnet = vnet;
    e->offload = offload;
    memcpy(e->network_id, net.buf, AT_NETWORK_ID_LEN);
    e->key_id = (uint32_t)key_id;
    e->sender_id = (uint32_t)sender_id;
    memcpy(e->prefix_frame, pf.buf, AT_NONCE_AT);
    memcpy(e->prefix_super, ps.buf, AT_NONCE_AT);
    e->seal_key = (AtKey *)Py_NewRef(seal_key);
    e->open_key = (AtKey *)Py_NewRef(open_key);
    e->counter = (AtCounter *)Py_NewRef(counter);
    e->ready = 1;
    rc = 0;
done:
    PyBuffer_Release(&net);
    PyBuffer_Release(&pf);
    PyBuffer_Release(&ps);
    PyBuffer_Release(&sa);
    return rc;
}

static int engine_ready(TokEngine *e) {
    if (e->ready == 1) return 1;
    PyErr_SetString(PyExc_ValueError, "this TokEngine was never initialised");
    return 0;
}

static PyObject *engine_start(TokEngine *e, PyObject *Py_UNUSED(ignored)) {
    if (!engine_ready(e)) return NULL;
    if (e->running) Py_RETURN_NONE;
    uint64_t drained;
    if (read(e->stop_fd, &drained, sizeof drained) < 0 && errno != EAGAIN) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    /* The thread takes no signals: they stay the main thread's (Python's handlers). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int err = pthread_create(&e->thread, NULL, engine_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    pthread_setname_np(e->thread, "tok-engine");
    e->running = 1;
    Py_RETURN_NONE;
}

static PyObject *engine_stop(TokEngine *e, PyObject *Py_UNUSED(ignored)) {
    engine_join(e);
    Py_RETURN_NONE;
}

static PyObject *engine_fileno(TokEngine *e, PyObject *Py_UNUSED(ignored)) {
    if (!engine_ready(e)) return NULL;
    return PyLong_FromLong(e->ho_fd);
}

static PyObject *engine_set_node(TokEngine *e, PyObject *args) {
    Py_buffer sa;
    int node_offload;
    if (!engine_ready(e)) return NULL;
    if (!PyArg_ParseTuple(args, "y*p", &sa, &node_offload)) return NULL;
    int rc = set_node(e, &sa, node_offload);
    PyBuffer_Release(&sa);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *engine_set_windows(TokEngine *e, PyObject *windows) {
    /* set_windows(opener._windows): the senders the thread opens for (their C windows). */
    if (!engine_ready(e)) return NULL;
    if (!PyDict_Check(windows)) {
        PyErr_SetString(PyExc_TypeError, "set_windows takes Opener._windows (a dict)");
        return NULL;
    }
    if (e->running && !slot_handed(e, &e->udp_slot)) {
        PyErr_SetString(PyExc_RuntimeError, "set_windows while the engine reads the socket");
        return NULL;
    }
    Py_ssize_t n = PyDict_Size(windows), i = 0, at = 0;
    Sender *table = n ? calloc((size_t)n, sizeof(Sender)) : NULL;
    if (n && table == NULL) return PyErr_NoMemory();
    PyObject *k, *v;
    while (PyDict_Next(windows, &i, &k, &v)) {
        if (!PyObject_TypeCheck(v, &AtWindow_Type) || ((AtWindow *)v)->bits == NULL ||
            !PyLong_Check(k))
            continue; /* a pure-Python window: that sender's packets go to the pure path */
        unsigned long long s = PyLong_AsUnsignedLongLong(k);
        if (PyErr_Occurred() || s > UINT32_MAX) {
            PyErr_Clear();
            continue;
        }
        table[at].sender = (uint32_t)s;
        table[at++].window = (AtWindow *)Py_NewRef(v);
    }
    clear_senders(e);
    e->senders = table;
    e->nsenders = at;
    Py_RETURN_NONE;
}


/* The item of a handed slot not yet taken, as a tuple; None. The slot is stable: the thread
 * does not touch a handed slot. */
static PyObject *slot_item(TokEngine *e, Slot *s) {
    pthread_mutex_lock(&e->mu);
    int fresh = s->handed && !s->taken;
    s->taken |= fresh;
    pthread_mutex_unlock(&e->mu);
    if (!fresh) Py_RETURN_NONE;
    const char *buf = (const char *)s->buf;
    switch (s->kind) {
    case K_PACKET:
        return Py_BuildValue("(sy#)", "packet", buf, (Py_ssize_t)s->len);
    case K_RAW: {
        PyObject *addr = at_addr_tuple(&s->from);
        if (addr == NULL) return NULL;
        return Py_BuildValue("(sy#nN)", "raw", buf, (Py_ssize_t)s->len, (Py_ssize_t)s->segment,
                             addr);
    }
    }
    /* K_FRAME / K_ERROR: the rest of the run after it, (data, segment, addr) or None. */
    PyObject *rest = Py_None;
    if (s->rest_len) {
        PyObject *addr = at_addr_tuple(&s->from);
        if (addr == NULL) return NULL;
        rest = Py_BuildValue("(y#nN)", (const char *)s->rest, (Py_ssize_t)s->rest_len,
                             (Py_ssize_t)s->rest_segment, addr);
        if (rest == NULL) return NULL;
    } else {
        Py_INCREF(rest);
    }
    if (s->kind == K_FRAME) return Py_BuildValue("(sy#N)", "frame", buf, (Py_ssize_t)s->len, rest);
    return Py_BuildValue("(siN)", "error", s->err, rest);
}

static PyObject *engine_take(TokEngine *e, PyObject *Py_UNUSED(ignored)) {
    /* take() -> (tap_item, udp_item): what was handed over since the last take (None: that fd
     * is still the engine's, or its item was taken already). Clears the eventfd. */
    if (!engine_ready(e)) return NULL;
    uint64_t drained;
    while (read(e->ho_fd, &drained, sizeof drained) < 0 && errno == EINTR) {
    }
    PyObject *tap = slot_item(e, &e->tap_slot);
    PyObject *udp = tap ? slot_item(e, &e->udp_slot) : NULL;
    if (udp == NULL) {
        Py_XDECREF(tap);
        return NULL;
    }
    return Py_BuildValue("(NN)", tap, udp);
}

static PyObject *resume(TokEngine *e, Slot *s, int fd) {
    if (!engine_ready(e)) return NULL;
    pthread_mutex_lock(&e->mu);
    int handed = s->handed;
    s->handed = 0;
    pthread_mutex_unlock(&e->mu);
    if (handed && watch(e, fd) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *engine_resume_tap(TokEngine *e, PyObject *Py_UNUSED(ignored)) {
    return resume(e, &e->tap_slot, e->tap_fd);
}

static PyObject *engine_resume_udp(TokEngine *e, PyObject *Py_UNUSED(ignored)) {
    return resume(e, &e->udp_slot, e->sock_fd);
}

static PyObject *counts_dict(const Counts *c, int engine_own) {
    PyObject *drops = PyDict_New();
    if (drops == NULL) return NULL;
    for (int i = 0; i < N_DROPS; i++) {
        if (c->drops[i] == 0) continue;
        PyObject *v = PyLong_FromLongLong(c->drops[i]);
        if (v == NULL || PyDict_SetItemString(drops, DROP_NAMES[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(drops);
            return NULL;
        }
        Py_DECREF(v);
    }
    PyObject *d = Py_BuildValue(
        "{sLsLsLsLsLsLsLsLsN}", "rx_frames", c->rx_frames, "rx_bytes", c->rx_bytes, "rx_batches",
        c->rx_batches, "tx_frames", c->tx_frames, "tx_bytes", c->tx_bytes, "tx_dropped",
        c->tx_dropped, "tx_errors", c->tx_errors, "send_errors", c->send_errors, "drops", drops);
    if (d == NULL || !engine_own) return d;
    PyObject *own = Py_BuildValue("{sLsLsLsL}", "sealed", c->sealed, "opened", c->opened,
                                  "tap_handovers", c->tap_handovers, "udp_handovers",
                                  c->udp_handovers);
    if (own == NULL || PyDict_Update(d, own) < 0) Py_CLEAR(d);
    Py_XDECREF(own);
    return d;
}

static PyObject *engine_sync(TokEngine *e, PyObject *Py_UNUSED(ignored)) {
    /* sync() -> the counts since the last sync (TapCounters' fields, send_errors, drops by
     * reason) and last_heard (0.0: nothing opened yet), for Python to fold in. */
    if (!engine_ready(e)) return NULL;
    pthread_mutex_lock(&e->mu);
    Counts c = e->pending;
    memset(&e->pending, 0, sizeof e->pending);
    double heard = e->last_heard;
    pthread_mutex_unlock(&e->mu);
    PyObject *d = counts_dict(&c, 0);
    if (d == NULL) return NULL;
    PyObject *h = PyFloat_FromDouble(heard);
    if (h == NULL || PyDict_SetItemString(d, "last_heard", h) < 0 ||
        PyDict_SetItemString(d, "gso_off", c.gso_off ? Py_True : Py_False) < 0)
        Py_CLEAR(d);
    Py_XDECREF(h);
    return d;
}

static PyObject *engine_get_counters(TokEngine *e, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&e->mu);
    Counts c = e->total;
    pthread_mutex_unlock(&e->mu);
    return counts_dict(&c, 1);
}

static PyObject *engine_get_running(TokEngine *e, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(e->running);
}

static PyMethodDef engine_methods[] = {
    {"start", (PyCFunction)engine_start, METH_NOARGS,
     "Start the thread (watching the TAP and the socket). Idempotent."},
    {"stop", (PyCFunction)engine_stop, METH_NOARGS,
     "Stop and join the thread (the GIL released meanwhile). Idempotent; the fds stay open."},
    {"fileno", (PyCFunction)engine_fileno, METH_NOARGS,
     "The hand-over eventfd: readable when take() has something (loop.add_reader)."},
    {"take", (PyCFunction)engine_take, METH_NOARGS,
     "take() -> (tap_item, udp_item), each None or ('packet', data) / ('raw', data, segment, "
     "addr) / ('frame', frame, rest) / ('error', errno, rest), rest None or (data, segment, "
     "addr): the rest of that datagram's GRO run, unopened; that fd is then Python's until "
     "resumed"},
    {"resume_tap", (PyCFunction)engine_resume_tap, METH_NOARGS,
     "Watch the TAP again (after Python drained it)."},
    {"resume_udp", (PyCFunction)engine_resume_udp, METH_NOARGS,
     "Watch the socket again (after Python drained it; call set_windows first)."},
    {"set_node", (PyCFunction)engine_set_node, METH_VARARGS,
     "set_node(sockaddr, node_offload): where sealed frames go and whose datagrams are opened"},
    {"set_windows", (PyCFunction)engine_set_windows, METH_O,
     "set_windows(opener._windows): the senders with C replay windows (socket not watched)"},
    {"sync", (PyCFunction)engine_sync, METH_NOARGS,
     "sync() -> counts since the last sync and last_heard, to fold into the Python objects"},
    {NULL}};

static PyGetSetDef engine_getset[] = {
    {"counters", (getter)engine_get_counters, NULL,
     "totals since start: TapCounters' fields, send_errors, drops, and the engine's own "
     "(sealed, opened, tap_handovers, udp_handovers)",
     NULL},
    {"running", (getter)engine_get_running, NULL, "the thread runs", NULL},
    {NULL}};

PyTypeObject TokEngine_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "atenet._fast.TokEngine",
    .tp_basicsize = sizeof(TokEngine),
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "tok connect's two hops in a C thread without the GIL (csrc/fast/tokengine.c).",
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
    .tp_init = (initproc)engine_init,
    .tp_new = engine_new,
};
