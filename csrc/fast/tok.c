/* tok connect's hops in C: TAP → seal → UDP and UDP → open → TAP (see fast.h).
 *
 * Called from client/connect.py's reader callbacks (Connection._on_tap / _on_udp) when the fast
 * path is on; the pure path there is the reference, and these functions mirror it call for call:
 * the same syscalls in the same order (a lone frame leaves with one sendto as soon as the TAP
 * read that finds the queue empty returns; several go as UDP GSO runs like UdpSocket._send_runs),
 * the same counters (TapDevice.counters, UdpSocket.send_errors/gso, ClientCore.drops) and the
 * same Sealer counter and Opener windows, which stay the Python objects' own.
 *
 * What is not the common case is handed back to Python, which runs the pure code for it and
 * calls again: on the way out an offloaded packet too big for one datagram (a super-frame: it
 * is fragmented) or any offloaded packet for a node that does not take them; on the way in a
 * fragment (the reassembler), a control message, a sender's first packet (no replay window yet)
 * and anything ClientCore.receive would treat differently. DHCP replies, while the DHCP client
 * runs, are opened here and appended to a list for it.
 *
 * The buffers are static: every call runs with the GIL held and none calls back into code that
 * could call these functions again (a guard refuses it anyway).
 */
#include "fast.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>


/* Sizes, read once from the Python modules that define them (one source of truth). */
static struct {
    int ready;
    int busy;
    long fragment_size; /* overlay.fragment.FRAGMENT_SIZE: largest datagram of a run */
    long gso_segments;  /* transport.udp.GSO_SEGMENTS */
    long gso_bytes;     /* transport.udp.GSO_BYTES */
    long recv_size;     /* transport.udp.RECV_SIZE */
    long read_size;     /* transport.tap.READ_SIZE */
    uint8_t *in;        /* one TAP read or one recvmsg */
    uint8_t *out;       /* sealed datagrams of a run, or one opened payload */
    size_t out_size;
    PyObject *s_rx_frames, *s_rx_bytes, *s_rx_batches, *s_tx_frames, *s_tx_bytes, *s_tx_dropped,
        *s_tx_errors, *s_gso, *s_send_errors, *s_token, *s_network_id, *s_key_id, *s_opener,
        *s_drops, *s_offload, *s_last_heard;
} tok;

static const uint8_t ZERO_VNET[AT_VNET_HDR_LEN];
static uint8_t jbuf[AT_MAX_PACKET]; /* a packet joined from a GRO run's fragments (udp → TAP) */
static long joined;                 /* packets joined in C from a run's fragments (tok_joined) */

static int long_from(const char *module, const char *name, long *out) {
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) return -1;
    PyObject *v = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    if (v == NULL) return -1;
    *out = PyLong_AsLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int tok_init(void) {
    if (tok.ready) return 0;
    if (long_from("atenet.overlay.fragment", "FRAGMENT_SIZE", &tok.fragment_size) ||
        long_from("atenet.transport.udp", "GSO_SEGMENTS", &tok.gso_segments) ||
        long_from("atenet.transport.udp", "GSO_BYTES", &tok.gso_bytes) ||
        long_from("atenet.transport.udp", "RECV_SIZE", &tok.recv_size) ||
        long_from("atenet.transport.tap", "READ_SIZE", &tok.read_size))
        return -1;
    if (tok.fragment_size < AT_OVERHEAD || tok.gso_segments < 1 || tok.gso_bytes < 1 ||
        tok.recv_size < 1 || tok.read_size < AT_VNET_HDR_LEN || tok.recv_size > AT_MAX_PACKET ||
        tok.read_size > AT_MAX_PACKET) {
        PyErr_SetString(PyExc_RuntimeError, "atenet._fast: unexpected packet size constants");
        return -1;
    }
#define NAME(field, text) \
    if ((tok.field = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_rx_frames, "rx_frames")
    NAME(s_rx_bytes, "rx_bytes")
    NAME(s_rx_batches, "rx_batches")
    NAME(s_tx_frames, "tx_frames")
    NAME(s_tx_bytes, "tx_bytes")
    NAME(s_tx_dropped, "tx_dropped")
    NAME(s_tx_errors, "tx_errors")
    NAME(s_gso, "gso")
    NAME(s_send_errors, "send_errors")
    NAME(s_token, "token")
    NAME(s_network_id, "network_id")
    NAME(s_key_id, "key_id")
    NAME(s_opener, "opener")
    NAME(s_drops, "drops")
    NAME(s_offload, "offload")
    NAME(s_last_heard, "last_heard")
#undef NAME
    size_t in_size = (size_t)(tok.read_size > tok.recv_size ? tok.read_size : tok.recv_size);
    /* A run (at most gso_bytes) plus one more datagram of the largest size. */
    tok.out_size = (size_t)tok.gso_bytes + (size_t)tok.read_size + AT_OVERHEAD;
    tok.in = PyMem_RawMalloc(in_size);
    tok.out = PyMem_RawMalloc(tok.out_size);
    if (tok.in == NULL || tok.out == NULL) {
        PyMem_RawFree(tok.in);
        PyMem_RawFree(tok.out);
        tok.in = tok.out = NULL;
        PyErr_NoMemory();
        return -1;
    }
    tok.ready = 1;
    return 0;
}

/* ------------------------------------------------------------------ TAP → seal → UDP */

/* Sealed datagrams for one destination waiting in tok.out: a GSO run being built. */
typedef struct {
    int fd;
    const struct sockaddr *sa;
    socklen_t salen;
    int gso;       /* UdpSocket.gso: UDP_SEGMENT works here */
    long errors;   /* to add to UdpSocket.send_errors */
    size_t len;    /* bytes in tok.out */
    size_t size;   /* the run's segment size (its first datagram's) */
    long count;    /* datagrams in the run */
    int closed;    /* a shorter datagram ended it */
} Run;

static void send_one(Run *r, const uint8_t *buf, size_t len) {
    while (sendto(r->fd, buf, len, 0, r->sa, r->salen) < 0) {
        if (errno != EINTR) {
            r->errors++;
            return;
        }
    }
}

/* Send the run: one datagram with sendto, several as one sendmsg with UDP_SEGMENT (as
 * UdpSocket._send_runs; a kernel that refuses GSO turns it off for good, one sendto each). */
static void run_flush(Run *r) {
    long count = r->count;
    if (count == 0) return;
    r->count = 0;
    r->closed = 0;
    size_t len = r->len;
    r->len = 0;
    if (count == 1) {
        send_one(r, tok.out, len);
        return;
    }
    if (r->gso) {
        int rc = at_send_gso(r->fd, tok.out, len, r->size, r->sa, (socklen_t)r->salen);
        if (rc == 0) return;
        if (rc < 0) {
            r->errors += count;
            return;
        }
        r->gso = 0; /* no UDP GSO here: one datagram each, from now on */
    }
    for (size_t at = 0; at < len; at += r->size) {
        size_t n = len - at < r->size ? len - at : r->size;
        send_one(r, tok.out + at, n);
    }
}

/* Make room for a datagram of `len` bytes: flush unless it extends the run (the rules of
 * UdpSocket._send_runs: at most gso_segments and gso_bytes, none longer than the first, the
 * first no longer than a fragment; a shorter one is the run's last). */
static void run_room(Run *r, size_t len) {
    if (r->count == 0) return;
    if (!r->gso || r->closed || r->size > (size_t)tok.fragment_size || len > r->size ||
        r->len + len > (size_t)tok.gso_bytes || r->count >= tok.gso_segments)
        run_flush(r);
}

static void run_add(Run *r, size_t len) {
    if (r->count == 0) r->size = len;
    else if (len < r->size) r->closed = 1;
    r->count++;
    r->len += len;
}

static PyObject *tok_sockaddr(PyObject *Py_UNUSED(module), PyObject *args) {
    /* tok_sockaddr((host, port)) -> the sockaddr (bytes) tok_tap_to_udp sends to, or None when
     * the host is not an IPv4 address (the pure path sends then, as it always did). */
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "(si)", &host, &port)) return NULL;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    if (port < 0 || port > 65535 || inet_pton(AF_INET, host, &sin.sin_addr) != 1) Py_RETURN_NONE;
    sin.sin_port = htons((uint16_t)port);
    return PyBytes_FromStringAndSize((const char *)&sin, sizeof(sin));
}

static PyObject *tok_tap_to_udp(PyObject *Py_UNUSED(module), PyObject *args) {
    /* tok_tap_to_udp(tap_fd, vnet, tap_counters, sealer, udp, sock_fd, sockaddr, node_offload,
     *                budget, first) -> (frames read, packet | None) */
    int tap_fd, vnet, sock_fd, node_offload, first;
    long budget;
    PyObject *counters, *sealer, *udp;
    Py_buffer sa_buf;
    if (!PyArg_ParseTuple(args, "ipOOOiy*plp", &tap_fd, &vnet, &counters, &sealer, &udp,
                          &sock_fd, &sa_buf, &node_offload, &budget, &first))
        return NULL;
    PyObject *result = NULL, *back = NULL;
    struct sockaddr_storage sa;
    if (tok_init() < 0) goto done;
    if (sa_buf.len <= 0 || (size_t)sa_buf.len > sizeof(sa)) {
        PyErr_SetString(PyExc_ValueError, "not a sockaddr from tok_sockaddr");
        goto done;
    }
    if (tok.busy) {
        PyErr_SetString(PyExc_RuntimeError, "atenet._fast: tok path re-entered");
        goto done;
    }
    memcpy(&sa, sa_buf.buf, sa_buf.len);
    PyObject *gso_obj = PyObject_GetAttr(udp, tok.s_gso);
    if (gso_obj == NULL) goto done;
    int gso = PyObject_IsTrue(gso_obj);
    Py_DECREF(gso_obj);
    if (gso < 0) goto done;

    tok.busy = 1;
    Run run = {.fd = sock_fd, .sa = (struct sockaddr *)&sa, .salen = (socklen_t)sa_buf.len,
               .gso = gso};
    long frames = 0, nbytes = 0;
    int read_errno = 0, failed = 0;
    uint8_t *in = tok.in;
    while (frames < budget) {
        ssize_t n = read(tap_fd, in, (size_t)tok.read_size);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) read_errno = errno;
            break;
        }
        frames++;
        nbytes += n;
        const uint8_t *payload = in;
        size_t plen = (size_t)n;
        int ptype = AT_FRAME;
        if (vnet) {
            if (n < AT_VNET_HDR_LEN) {
                if ((back = PyBytes_FromStringAndSize((const char *)in, n)) == NULL) failed = 1;
                break;
            }
            if (in[1] || (in[0] & 1)) {
                /* Offloaded (offload.is_offloaded): whole, as TYPE_SUPERFRAME, when the node
                 * takes it and it fits one datagram; else ClientCore.seal_packet (fragments,
                 * or the frames it stands for). */
                if (!node_offload || (size_t)n + AT_OVERHEAD > (size_t)tok.fragment_size) {
                    if ((back = PyBytes_FromStringAndSize((const char *)in, n)) == NULL)
                        failed = 1;
                    break;
                }
                ptype = AT_SUPERFRAME;
            } else {
                payload = in + AT_VNET_HDR_LEN;
                plen = (size_t)n - AT_VNET_HDR_LEN;
            }
        }
        size_t sealed = plen + AT_OVERHEAD;
        run_room(&run, sealed);
        if (at_sealer_seal(sealer, ptype, payload, plen, tok.out + run.len) < 0) {
            failed = 1;
            break;
        }
        run_add(&run, sealed);
        if (!run.gso) run_flush(&run);
    }
    /* What came before a handed-back packet leaves first: the order on the wire is kept. */
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    if (failed) PyErr_Fetch(&et, &ev, &tb);
    run_flush(&run);
    tok.busy = 0;
    int ok = at_add_attr(counters, tok.s_rx_frames, frames) == 0 &&
             at_add_attr(counters, tok.s_rx_bytes, nbytes) == 0 &&
             at_add_attr(counters, tok.s_rx_batches, first && frames ? 1 : 0) == 0 &&
             at_add_attr(udp, tok.s_send_errors, run.errors) == 0 &&
             (run.gso == gso || PyObject_SetAttr(udp, tok.s_gso, Py_False) == 0);
    if (failed) {
        PyErr_Restore(et, ev, tb); /* the first error wins */
        goto done;
    }
    if (!ok) goto done;
    if (read_errno) {
        errno = read_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = Py_BuildValue("(lO)", frames, back ? back : Py_None);
done:
    Py_XDECREF(back);
    PyBuffer_Release(&sa_buf);
    return result;
}

/* ------------------------------------------------------------------ UDP → open → TAP */

/* wire/dhcp.py is_dhcp_reply_frame: IPv4 (untagged), UDP, ports 67 → 68, at fixed offsets. */
static int is_dhcp_reply(const uint8_t *f, size_t len) {
    if (len < 42 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 17) return 0;
    size_t ihl = (size_t)(f[14] & 0x0F) * 4;
    if (18 + ihl > len) return 0;
    return f[14 + ihl] == 0 && f[15 + ihl] == 0x43 && f[16 + ihl] == 0 && f[17 + ihl] == 0x44;
}

typedef struct {
    int fd;
    long frames, bytes, dropped, errors;
} TapOut;

/* TapDevice._write: count a full queue as dropped and a refused frame as an error; -1 with an
 * OSError set for anything else (EBADFD: the device is gone; Python raises TapGone). */
static int tap_write(TapOut *t, const struct iovec *iov, int n, long nbytes) {
    for (;;) {
        if (writev(t->fd, iov, n) >= 0) {
            t->frames++;
            t->bytes += nbytes;
            return 0;
        }
        int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
            t->dropped++;
            return 0;
        }
        if (err == EINVAL || err == EIO || err == EMSGSIZE || err == EFAULT) {
            t->errors++;
            return 0;
        }
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
}


/* What to do with one whole datagram. */
#define RX_DONE 0 /* written to the TAP, dropped and counted, or given to the DHCP list */
#define RX_BACK 1 /* the pure path takes it (and what follows it in its run) */
#define RX_ERROR -1

typedef struct {
    const uint8_t *network_id;
    uint32_t key_id;
    PyObject *opener, *drops, *dhcp;
    int offload, vnet, heard;
    TapOut tap;
} Rx;

static int rx_drop(Rx *rx, const char *reason) {
    return at_count(rx->drops, reason, 1) < 0 ? RX_ERROR : RX_DONE;
}

/* ClientCore.receive, its common case, and the TAP write _on_udp's to_tap does after it. */
static int rx_one(Rx *rx, const uint8_t *p, size_t len) {
    if (len > AT_TYPE_AT && p[AT_TYPE_AT] == AT_FRAGMENT) return RX_BACK; /* the reassembler */
    if (len < AT_OVERHEAD) return rx_drop(rx, "short");
    if (p[AT_VERSION_AT] != AT_VERSION) return rx_drop(rx, "version");
    int ptype = p[AT_TYPE_AT];
    if (ptype != AT_FRAME && ptype != AT_SUPERFRAME && ptype != AT_CONTROL)
        return rx_drop(rx, "type");
    if (memcmp(p, rx->network_id, AT_NETWORK_ID_LEN) != 0) return rx_drop(rx, "wrong_network");
    if (at_be32(p + AT_KEY_ID_AT) != rx->key_id) return rx_drop(rx, "key");
    /* Control messages, and super-frames a plain TAP cannot take: ClientCore.receive. */
    if (ptype == AT_CONTROL || (ptype == AT_SUPERFRAME && !(rx->offload && rx->vnet)))
        return RX_BACK;
    const char *reason = NULL;
    int rc = at_opener_open(rx->opener, p, len, at_be32(p + AT_SENDER_AT),
                            at_be64(p + AT_COUNTER_AT), tok.out, &reason);
    if (rc < 0) return RX_ERROR;
    if (rc == AT_OPEN_SLOW) return RX_BACK; /* a sender's first packet: Opener.open */
    if (rc == AT_OPEN_DROP) return rx_drop(rx, reason);
    rx->heard = 1;
    size_t plen = len - AT_OVERHEAD;
    struct iovec iov[2];
    if (ptype == AT_SUPERFRAME) { /* TapDevice.write_packet: as it is */
        iov[0].iov_base = tok.out;
        iov[0].iov_len = plen;
        return tap_write(&rx->tap, iov, 1, (long)plen - AT_VNET_HDR_LEN) < 0 ? RX_ERROR : RX_DONE;
    }
    if (rx->dhcp != NULL && is_dhcp_reply(tok.out, plen)) {
        /* For the DHCP client, not the kernel (Connection._on_udp). */
        PyObject *frame = PyBytes_FromStringAndSize((const char *)tok.out, (Py_ssize_t)plen);
        if (frame == NULL) return RX_ERROR;
        int ap = PyList_Append(rx->dhcp, frame);
        Py_DECREF(frame);
        return ap < 0 ? RX_ERROR : RX_DONE;
    }
    int n = 0;
    if (rx->vnet) { /* TapDevice.write: behind an all-zero virtio-net header */
        iov[n].iov_base = (void *)ZERO_VNET;
        iov[n++].iov_len = AT_VNET_HDR_LEN;
    }
    iov[n].iov_base = tok.out;
    iov[n++].iov_len = plen;
    return tap_write(&rx->tap, iov, n, (long)plen) < 0 ? RX_ERROR : RX_DONE;
}

static PyObject *tok_udp_to_tap(PyObject *Py_UNUSED(module), PyObject *args) {
    /* tok_udp_to_tap(sock_fd, tap_fd, vnet, tap_counters, core, dhcp_frames | None, now,
     *                budget) -> (datagrams read, (data, segment, addr) | None) */
    int sock_fd, tap_fd, vnet;
    PyObject *counters, *core, *dhcp;
    double now;
    long budget;
    if (!PyArg_ParseTuple(args, "iipOOOdl", &sock_fd, &tap_fd, &vnet, &counters, &core, &dhcp,
                          &now, &budget))
        return NULL;
    if (tok_init() < 0) return NULL;
    if (dhcp != Py_None && !PyList_Check(dhcp)) {
        PyErr_SetString(PyExc_TypeError, "dhcp_frames is a list or None");
        return NULL;
    }
    if (tok.busy) {
        PyErr_SetString(PyExc_RuntimeError, "atenet._fast: tok path re-entered");
        return NULL;
    }
    PyObject *result = NULL, *back = NULL, *token = NULL, *network_id = NULL, *key_id = NULL;
    Rx rx = {.dhcp = dhcp == Py_None ? NULL : dhcp, .vnet = vnet, .tap = {.fd = tap_fd}};
    token = PyObject_GetAttr(core, tok.s_token);
    if (token == NULL) goto done;
    network_id = PyObject_GetAttr(token, tok.s_network_id);
    key_id = PyObject_GetAttr(token, tok.s_key_id);
    rx.opener = PyObject_GetAttr(core, tok.s_opener);
    rx.drops = PyObject_GetAttr(core, tok.s_drops);
    PyObject *offload = PyObject_GetAttr(core, tok.s_offload);
    if (offload != NULL) {
        rx.offload = PyObject_IsTrue(offload);
        Py_DECREF(offload);
    }
    if (network_id == NULL || key_id == NULL || rx.opener == NULL || rx.drops == NULL ||
        offload == NULL || rx.offload < 0)
        goto done;
    if (!PyBytes_Check(network_id) || PyBytes_GET_SIZE(network_id) != AT_NETWORK_ID_LEN ||
        !PyDict_Check(rx.drops)) {
        PyErr_SetString(PyExc_TypeError, "ClientCore: unexpected token or drops");
        goto done;
    }
    rx.network_id = (const uint8_t *)PyBytes_AS_STRING(network_id);
    rx.key_id = (uint32_t)PyLong_AsUnsignedLong(key_id);
    if (PyErr_Occurred()) goto done;

    tok.busy = 1;
    long reads = 0;
    int failed = 0;
    uint8_t *in = tok.in;
    while (reads < budget && !failed && back == NULL) {
        struct sockaddr_storage ss;
        size_t segment = 0;
        ssize_t n = at_recv_gro(sock_fd, in, (size_t)tok.recv_size, &ss, &segment);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            reads++; /* e.g. an ICMP error reported on the socket: not ours to stop on */
            continue;
        }
        reads++;
        size_t len = (size_t)n;
        size_t step = (segment && segment < len) ? segment : len;
        for (size_t at = 0; at < len || (len == 0 && at == 0); at += step) {
            size_t piece = len - at < step ? len - at : step;
            size_t used = 0, size = 0;
            int rc;
            /* A whole packet's fragments at the head of the rest of a GRO run (a super-frame's
             * GSO send): joined here and opened as the one datagram they stand for, in order
             * with the datagrams around them. Anything else that is a fragment (a lone one, a
             * run cut short) goes back to the pure Reassembler as before (rx_one). */
            if (step < len && piece > AT_TYPE_AT && in[at + AT_TYPE_AT] == AT_FRAGMENT)
                size = at_frag_join(in + at, len - at, step, NULL, &used);
            if (size && size <= sizeof jbuf) {
                at_frag_join(in + at, len - at, step, jbuf, &used);
                rc = rx_one(&rx, jbuf, size);
                if (rc == RX_DONE) {
                    joined++;
                    at += used - step; /* the loop adds step */
                    continue;
                }
            } else {
                rc = rx_one(&rx, in + at, piece);
            }
            if (rc == RX_ERROR) {
                failed = 1;
                break;
            }
            if (rc == RX_BACK) {
                /* This datagram and the rest of its run go to the pure path, in order. */
                PyObject *data = PyBytes_FromStringAndSize((const char *)in + at, len - at);
                PyObject *addr = data ? at_addr_tuple(&ss) : NULL;
                if (addr != NULL)
                    back = Py_BuildValue("(NnN)", data, (Py_ssize_t)(step < len ? step : 0),
                                         addr);
                else
                    Py_XDECREF(data);
                if (back == NULL) failed = 1;
                break;
            }
            if (len == 0) break;
        }
    }
    tok.busy = 0;
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    if (failed) PyErr_Fetch(&et, &ev, &tb);
    int ok = at_add_attr(counters, tok.s_tx_frames, rx.tap.frames) == 0 &&
             at_add_attr(counters, tok.s_tx_bytes, rx.tap.bytes) == 0 &&
             at_add_attr(counters, tok.s_tx_dropped, rx.tap.dropped) == 0 &&
             at_add_attr(counters, tok.s_tx_errors, rx.tap.errors) == 0;
    if (ok && rx.heard) {
        PyObject *t = PyFloat_FromDouble(now);
        ok = t != NULL && PyObject_SetAttr(core, tok.s_last_heard, t) == 0;
        Py_XDECREF(t);
    }
    if (failed) {
        PyErr_Restore(et, ev, tb);
        goto done;
    }
    if (!ok) goto done;
    result = Py_BuildValue("(lO)", reads, back ? back : Py_None);
done:
    Py_XDECREF(back);
    Py_XDECREF(token);
    Py_XDECREF(network_id);
    Py_XDECREF(key_id);
    Py_XDECREF(rx.opener);
    Py_XDECREF(rx.drops);
    return result;
}

static PyObject *tok_joined(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(args)) {
    return PyLong_FromLong(joined);
}

PyMethodDef at_tok_methods[] = {
    {"tok_joined", tok_joined, METH_NOARGS,
     "tok_joined() -> packets tok_udp_to_tap joined in C from a GRO run's fragments"},
    {"tok_sockaddr", tok_sockaddr, METH_VARARGS,
     "tok_sockaddr((host, port)) -> sockaddr bytes for tok_tap_to_udp, or None (not IPv4)"},
    {"tok_tap_to_udp", tok_tap_to_udp, METH_VARARGS,
     "tok_tap_to_udp(tap_fd, vnet, tap_counters, sealer, udp, sock_fd, sockaddr, node_offload, "
     "budget, first) -> (frames read, packet for ClientCore.seal_packet | None): read the TAP "
     "until empty or budget frames, seal and send each plain one (UDP GSO runs)"},
    {"tok_udp_to_tap", tok_udp_to_tap, METH_VARARGS,
     "tok_udp_to_tap(sock_fd, tap_fd, vnet, tap_counters, core, dhcp_frames, now, budget) -> "
     "(datagrams read, (data, segment, addr) for the reassembler and ClientCore.receive | "
     "None): read the socket until empty or budget datagrams, open and write each frame"},
    {NULL}};
