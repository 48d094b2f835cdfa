/* The node's hop in C: UDP → open → switch (unicast common case) → seal → UDP (see fast.h).
 *
 * node_receive(core, udp, max_reads, now) replaces UdpSocket.receive + NodeCore.datagram in the
 * node daemon's read callback. It reads the socket as receive() does (recvmsg with UDP_GRO,
 * runs split by their segment size, hold from the second read, release at the end) and, per
 * datagram, does the common case of NodeCore.datagram → NetworkRuntime.packet → the switch →
 * UdpClientPort.deliver on the pure path's own objects: a frame or an offloaded packet (a
 * super-frame, with GSO or without, whose header passes offload.check, done here) from a
 * client port or a peer node with a replay window, to a MAC learned behind a client port, or
 * from a client port to a MAC learned behind one live peer node. The bulk path: a GRO run's
 * whole packet is joined here (node_read) and taken as one datagram; a sealed super-frame above
 * a path-MTU datagram leaves cut, in one UDP GSO send (send_super), as UdpSocket.send sends it. Every check that
 * could send the datagram elsewhere is made BEFORE anything is changed; what is not the common
 * case goes to the pure path whole (core.datagram) or, once opened, to the pure step that
 * follows (switch.from_local / packet_from_local, runtime._from_peer, the destination's
 * deliver) — no step ever runs twice.
 *
 * With a NodeEngine (nodeengine.c) the daemon passes it in: each flow this function forwards
 * inline between client ports or a client port and a peer node is recorded in the engine's
 * cache (at_engine_note), and the engine's thread forwards the flow's next datagrams itself.
 *
 * Handed to Python whole: fragments that do not make a whole packet in their GRO run (the
 * UdpSocket's reassembler, then core.datagram), short or malformed headers, control messages,
 * unknown networks, keys without an opener (derivation; revocation: a revoked key's opener is
 * popped, so its next datagram goes to the pure path, which drops it as revoked_key), senders
 * without a port or without a C replay window. After opening: a source MAC not learned there
 * yet, multicast and broadcast, neighbour frames while snooping, frames for the gateway,
 * unknown destinations, mirroring, peers not live, offload headers offload.check refuses (the
 * pure step counts them), offloaded packets a port needs cut into frames, and ports that are
 * not UDP clients (their deliver() runs). The engine never caches super-frame flows
 * (engine_kind). docs/protocol.md, "Fast path", says the same. */
#include "fast.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define AT_RECV_SIZE 65535
#define AT_ETH_MIN 14
#define AT_HOLD_MAX 64 /* transport/udp.py HOLD_MAX */

/* Interned attribute names, made on the first call. */
static struct {
    PyObject *datagrams, *freshness, *now, *set_now, *networks, *openers, *clients, *limits,
        *rate, *burst, *tokens, *bucket_at, *drops, *switch_, *addr, *roam, *last_seen,
        *frames_in, *bytes_in, *frames_out, *bytes_out, *fdb_mac, *fdb_at, *snoop, *gateway,
        *gateway_mac, *fdb, *mirroring, *from_local, *deliver, *seal, *send_errors, *held,
        *flush, *hold, *release, *reassembler, *feed, *datagram, *packet, *send, *offload,
        *packet_from_local, *valid_packet, *peer_senders, *node_sealer, *frames_to_peers,
        *frames_from_peers, *fdb_seen, *from_peer_, *gso;
    size_t fragment_size; /* overlay/fragment.py FRAGMENT_SIZE */
    PyObject *port_type;   /* atenet.node.core.UdpClientPort */
    PyObject *sealer_seal; /* atenet.overlay.seal.Sealer.seal (the function) */
    int ready;
} N;

static uint8_t rbuf[AT_RECV_SIZE + 1];
static uint8_t obuf[AT_MAX_PACKET];
static uint8_t sbuf[AT_MAX_PACKET];
static uint8_t jbuf[AT_MAX_PACKET]; /* a packet joined from a GRO run's fragments (node_read) */
static uint8_t cbuf[AT_MAX_PACKET]; /* a sealed super-frame cut into fragments (send_super) */
static int busy; /* the static buffers are in use (no re-entry) */

static int node_names(void) {
    if (N.ready) return 0;
#define NAME(field, text) \
    if ((N.field = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(datagrams, "datagrams") NAME(freshness, "freshness") NAME(now, "now")
    NAME(set_now, "set_now") NAME(networks, "networks") NAME(openers, "openers")
    NAME(clients, "clients") NAME(limits, "limits") NAME(rate, "rate") NAME(burst, "burst")
    NAME(tokens, "tokens") NAME(bucket_at, "bucket_at") NAME(drops, "drops")
    NAME(switch_, "switch") NAME(addr, "addr") NAME(roam, "_roam") NAME(last_seen, "last_seen")
    NAME(frames_in, "frames_in") NAME(bytes_in, "bytes_in") NAME(frames_out, "frames_out")
    NAME(bytes_out, "bytes_out") NAME(fdb_mac, "fdb_mac") NAME(fdb_at, "fdb_at")
    NAME(snoop, "snoop") NAME(gateway, "gateway") NAME(gateway_mac, "gateway_mac")
    NAME(fdb, "fdb") NAME(mirroring, "_mirroring") NAME(from_local, "from_local")
    NAME(deliver, "deliver") NAME(seal, "seal") NAME(send_errors, "send_errors")
    NAME(held, "_held") NAME(flush, "flush") NAME(hold, "hold") NAME(release, "release")
    NAME(reassembler, "reassembler") NAME(feed, "feed") NAME(datagram, "datagram")
    NAME(packet, "packet") NAME(send, "send") NAME(offload, "offload")
    NAME(packet_from_local, "packet_from_local") NAME(valid_packet, "_valid_packet")
    NAME(peer_senders, "peer_senders") NAME(node_sealer, "_node_sealer")
    NAME(frames_to_peers, "frames_to_peers") NAME(frames_from_peers, "frames_from_peers")
    NAME(fdb_seen, "fdb_seen") NAME(from_peer_, "_from_peer") NAME(gso, "gso")
#undef NAME
    PyObject *mod = PyImport_ImportModule("atenet.node.core");
    if (mod == NULL) return -1;
    N.port_type = PyObject_GetAttrString(mod, "UdpClientPort");
    Py_DECREF(mod);
    if (N.port_type == NULL) return -1;
    mod = PyImport_ImportModule("atenet.overlay.seal");
    if (mod == NULL) return -1;
    PyObject *sealer = PyObject_GetAttrString(mod, "Sealer");
    Py_DECREF(mod);
    if (sealer == NULL) return -1;
    N.sealer_seal = PyObject_GetAttr(sealer, N.seal);
    Py_DECREF(sealer);
    if (N.sealer_seal == NULL) return -1;
    mod = PyImport_ImportModule("atenet.overlay.fragment");
    if (mod == NULL) return -1;
    PyObject *size = PyObject_GetAttrString(mod, "FRAGMENT_SIZE");
    Py_DECREF(mod);
    if (size == NULL) return -1;
    N.fragment_size = PyLong_AsSize_t(size);
    Py_DECREF(size);
    if (N.fragment_size == (size_t)-1 && PyErr_Occurred()) return -1;
    N.ready = 1;
    return 0;
}

/* ------------------------------------------------------------------ small helpers */

static int get_double(PyObject *obj, PyObject *name, double *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int set_double(PyObject *obj, PyObject *name, double value) {
    PyObject *v = PyFloat_FromDouble(value);
    if (v == NULL) return -1;
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* Call obj.name(args...) and drop the result. */
static int call_method(PyObject *obj, PyObject *name, PyObject *const *args, size_t n) {
    PyObject *argv[8];
    argv[0] = obj;
    for (size_t i = 0; i < n; i++) argv[i + 1] = args[i];
    PyObject *r = PyObject_VectorcallMethod(name, argv, (n + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            NULL);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* The recvmsg address as Python's socket module makes it for AF_INET: (host, port). */
static PyObject *make_addr(const struct sockaddr_in *sa) {
    char host[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &sa->sin_addr, host, sizeof host) == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    return Py_BuildValue("(si)", host, (int)ntohs(sa->sin_port));
}


/* switch/snoop.py is_neighbour_frame: ARP, or IPv6 → ICMPv6 type 135/136, fixed offsets. */
static int is_neighbour_frame(const uint8_t *f, size_t len) {
    if (len < 56) return len >= 42 && f[12] == 8 && f[13] == 6;
    if (f[12] == 8) return f[13] == 6;
    return f[12] == 0x86 && f[13] == 0xDD && f[20] == 58 && (f[54] == 135 || f[54] == 136);
}

/* ------------------------------------------------------------------ per datagram */

typedef struct {
    PyObject *core, *udp, *now_obj;
    PyObject *send; /* core.send: what ports and the runtime send through (the daemon's UdpSocket) */
    double now;
    int fd;
    PyObject *engine; /* a NodeEngine to record inline flows in (nodeengine.c), or NULL */
    int noting;       /* this datagram's flow may be recorded: `note` has its source side */
    AtEngineNote note;
} Ctx;

/* The whole datagram to the pure path: core.datagram(data, addr, now). */
static int pure_datagram(Ctx *c, const uint8_t *data, size_t len, PyObject *addr) {
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    if (bytes == NULL) return -1;
    PyObject *args[3] = {bytes, addr, c->now_obj};
    int rc = call_method(c->core, N.datagram, args, 3);
    Py_DECREF(bytes);
    return rc;
}

/* A sealed packet to addr, as UdpSocket.send does for a small one: appended to the held list
 * while the read is held (flushed at HOLD_MAX), else one sendto now; errors counted. `sealed`
 * is a bytes object, or NULL with the packet in sbuf (`size` bytes). */
static int send_packet(Ctx *c, PyObject *sealed, size_t size, PyObject *addr) {
    PyObject *held = PyObject_GetAttr(c->udp, N.held);
    if (held == NULL) return -1;
    int rc = -1;
    if (held != Py_None || sealed != NULL) {
        PyObject *own = NULL;
        if (sealed == NULL) {
            own = sealed = PyBytes_FromStringAndSize((const char *)sbuf, (Py_ssize_t)size);
            if (sealed == NULL) goto done;
        }
        if (PyList_CheckExact(held)) {
            PyObject *item = PyTuple_Pack(2, sealed, addr);
            if (item != NULL) {
                rc = PyList_Append(held, item);
                Py_DECREF(item);
            }
            if (rc == 0 && PyList_GET_SIZE(held) >= AT_HOLD_MAX)
                rc = call_method(c->udp, N.flush, NULL, 0);
        } else {
            PyObject *args[2] = {sealed, addr};
            rc = call_method(c->udp, N.send, args, 2);
        }
        Py_XDECREF(own);
        goto done;
    }
    struct sockaddr_in sa;
    if (at_parse_addr4(addr, &sa)) {
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)sbuf, (Py_ssize_t)size);
        if (bytes == NULL) goto done;
        PyObject *args[2] = {bytes, addr};
        rc = call_method(c->udp, N.send, args, 2);
        Py_DECREF(bytes);
        goto done;
    }
    if (sendto(c->fd, sbuf, size, 0, (struct sockaddr *)&sa, sizeof sa) < 0)
        rc = at_add_attr(c->udp, N.send_errors, 1);
    else
        rc = 0;
done:
    Py_DECREF(held);
    return rc;
}

/* What the fast path did, for /api/status (node_counters()). */
static struct {
    unsigned long long inline_, python, steps, joined, super_;
} counts;

/* The seal method of UdpClientPort `dst` when it can be done inline: its own Sealer's seal, and
 * for an offloaded packet (at > 0) a port that takes them whole (a big one leaves cut, in one
 * GSO send: seal_send). NULL with no error set when not (its deliver()/deliver_packet() or the
 * switch does it). */
static PyObject *inline_seal(Ctx *c, PyObject *dst, size_t at) {
    if ((PyObject *)Py_TYPE(dst) != N.port_type) return NULL;
    /* Sent inline only where the port would send through the node's own send (the socket
     * node_receive was given); a port given another send keeps its deliver(). */
    PyObject *send = PyObject_GetAttr(dst, N.send);
    if (send == NULL) return NULL;
    int ours = PyObject_RichCompareBool(send, c->send, Py_EQ);
    Py_DECREF(send);
    if (ours <= 0) return NULL;
    PyObject *seal = PyObject_GetAttr(dst, N.seal);
    if (seal == NULL) return NULL;
    if (!PyMethod_Check(seal) || PyMethod_GET_FUNCTION(seal) != N.sealer_seal) {
        Py_DECREF(seal);
        return NULL;
    }
    if (at) {
        PyObject *v = PyObject_GetAttr(dst, N.offload);
        int offload = v ? PyObject_IsTrue(v) : -1;
        Py_XDECREF(v);
        if (offload <= 0) { /* a big one leaves cut, in one GSO send (send_super) */
            Py_DECREF(seal);
            return NULL;
        }
    }
    return seal;
}

/* The send of UdpSocket.send for a sealed super-frame above a path-MTU datagram, with the
 * sealing: what is held goes first (flush), then the packet sealed into sbuf, cut into cbuf
 * (at_frag_cut) and sent as one UDP GSO sendmsg; where the kernel refuses UDP GSO, udp.gso is
 * turned off for good and the fragments go one sendto each; other errors count send_errors
 * once, as the pure path. An address that is not plain IPv4, or a packet too big to cut, goes
 * to UdpSocket.send itself with the sealed bytes. */
static int send_super(Ctx *c, PyObject *sealer, const uint8_t *data, size_t len,
                      PyObject *addr) {
    size_t size = len + AT_OVERHEAD;
    size_t total = at_frag_cut_size(size);
    struct sockaddr_in sa;
    PyObject *held = PyObject_GetAttr(c->udp, N.held);
    if (held == NULL) return -1;
    int flush = PyList_Check(held) && PyList_GET_SIZE(held) > 0;
    Py_DECREF(held);
    if (total == AT_FRAG_TOO_BIG || total > sizeof cbuf || at_parse_addr4(addr, &sa)) {
        PyObject *sealed = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        if (sealed == NULL) return -1;
        int rc = at_sealer_seal(sealer, AT_SUPERFRAME, data, len,
                                (uint8_t *)PyBytes_AS_STRING(sealed));
        if (rc == 0) {
            PyObject *args[2] = {sealed, addr};
            rc = call_method(c->udp, N.send, args, 2);
        }
        Py_DECREF(sealed);
        return rc;
    }
    if (at_sealer_seal(sealer, AT_SUPERFRAME, data, len, sbuf) < 0) return -1;
    if (flush && call_method(c->udp, N.flush, NULL, 0) < 0) return -1; /* held ones first */
    at_frag_cut(sbuf, size, cbuf);
    counts.super_++;
    PyObject *v = PyObject_GetAttr(c->udp, N.gso);
    int gso = v ? PyObject_IsTrue(v) : -1;
    Py_XDECREF(v);
    if (gso < 0) return -1;
    if (gso) {
        int r = at_send_gso(c->fd, cbuf, total, N.fragment_size, &sa, sizeof sa);
        if (r == 0) return 0;
        if (r < 0) return at_add_attr(c->udp, N.send_errors, 1);
        if (PyObject_SetAttr(c->udp, N.gso, Py_False) < 0) return -1; /* no UDP GSO here */
    }
    for (size_t at = 0; at < total; at += N.fragment_size) {
        size_t n = total - at < N.fragment_size ? total - at : N.fragment_size;
        if (sendto(c->fd, cbuf + at, n, 0, (struct sockaddr *)&sa, sizeof sa) < 0)
            return at_add_attr(c->udp, N.send_errors, 1);
    }
    return 0;
}

/* Seal `data` (len bytes) as `ptype` with `sealer` and send it to `addr` (UdpSocket.send's
 * small-packet rules: held while the read is held, else sendto now). */
static int seal_send(Ctx *c, PyObject *sealer, int ptype, const uint8_t *data, size_t len,
                     PyObject *addr) {
    if (ptype == AT_SUPERFRAME && len + AT_OVERHEAD > N.fragment_size)
        return send_super(c, sealer, data, len, addr);
    PyObject *held = PyObject_GetAttr(c->udp, N.held);
    if (held == NULL) return -1;
    int holding = held != Py_None;
    Py_DECREF(held);
    PyObject *sealed = NULL;
    if (holding) {
        sealed = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len + AT_OVERHEAD);
        if (sealed == NULL) return -1;
    }
    int rc = at_sealer_seal(sealer, ptype, data, len,
                            sealed ? (uint8_t *)PyBytes_AS_STRING(sealed) : sbuf);
    if (rc == 0) rc = send_packet(c, sealed, len + AT_OVERHEAD, addr);
    Py_XDECREF(sealed);
    return rc;
}

/* UdpClientPort.deliver (at 0) / deliver_packet (at 10) inline, with the seal inline_seal gave:
 * counters, seal with THE DESTINATION's sealer, send to its address. */
static int port_deliver(Ctx *c, PyObject *dst, PyObject *seal, const uint8_t *data, size_t len,
                        size_t at) {
    /* deliver counts the frame, deliver_packet the packet with its offload header: len both. */
    if (at_add_attr(dst, N.frames_out, 1) < 0 || at_add_attr(dst, N.bytes_out, (long long)len) < 0)
        return -1;
    PyObject *daddr = PyObject_GetAttr(dst, N.addr);
    if (daddr == NULL) return -1;
    int rc = seal_send(c, PyMethod_GET_SELF(seal), at ? AT_SUPERFRAME : AT_FRAME, data, len, daddr);
    Py_DECREF(daddr);
    return rc;
}

/* The last step of a unicast frame to a local port `dst`: inline (port_deliver, with the seal
 * inline_seal gave) or, for another kind of port or a UDP port with its own seal (`seal` NULL),
 * its Python deliver() with the frame. */
static int deliver_to(Ctx *c, PyObject *dst, PyObject *seal, const uint8_t *data, size_t len,
                      size_t at, const uint8_t *frame, size_t flen) {
    if (seal != NULL) {
        counts.inline_++;
        return port_deliver(c, dst, seal, data, len, at);
    }
    PyObject *payload = PyBytes_FromStringAndSize((const char *)frame, (Py_ssize_t)flen);
    if (payload == NULL) return -1;
    PyObject *args[1] = {payload};
    counts.steps++;
    int rc = call_method(dst, N.deliver, args, 1);
    Py_DECREF(payload);
    return rc;
}

/* Whether a switch is mirroring (local mirror ports or peers with one): -1 on error. */
static int mirroring(PyObject *sw) {
    PyObject *v = PyObject_GetAttr(sw, N.mirroring);
    if (v == NULL) return -1;
    int on = PyObject_IsTrue(v);
    Py_DECREF(v);
    return on;
}

/* Record the flow just committed to the local UDP client port `dst` (its inline seal `seal`,
 * a bound method of its Sealer) in the node engine's cache: at_engine_note. 0 or -1. */
static int note_to_port(Ctx *c, const uint8_t *frame, PyObject *dst, PyObject *seal) {
    PyObject *daddr = PyObject_GetAttr(dst, N.addr);
    if (daddr == NULL) return -1;
    c->note.frame = frame;
    c->note.dst = dst;
    c->note.sealer = PyMethod_GET_SELF(seal);
    c->note.dst_addr = daddr;
    int noted = at_engine_note(c->engine, &c->note);
    Py_DECREF(daddr);
    return noted < 0 ? -1 : 0;
}

/* Switch.from_local's (at 0: a frame) or packet_from_local's (at 10: an offloaded packet)
 * unicast case for data opened from client port `port` — to another client port, or sealed to
 * the one peer node the destination was learned behind — or the pure method itself when any of
 * its other branches could apply (decided before changing anything). */
static int from_local(Ctx *c, PyObject *runtime, PyObject *sw, PyObject *port,
                      const uint8_t *data, size_t len, size_t at) {
    int rc = -1, python = 0;
    PyObject *fdb_mac = NULL, *v = NULL, *fdb = NULL, *dmac = NULL, *dst = NULL, *seal = NULL;
    PyObject *payload = NULL, *peer_addr = NULL, *node_sealer = NULL;
    const uint8_t *frame = data + at;
    size_t flen = len - at;

    fdb_mac = PyObject_GetAttr(port, N.fdb_mac);
    if (fdb_mac == NULL) goto done;
    if (!PyBytes_Check(fdb_mac) || PyBytes_GET_SIZE(fdb_mac) != 6 ||
        memcmp(PyBytes_AS_STRING(fdb_mac), frame + 6, 6) != 0)
        python = 1; /* learning: a new or moved source MAC, or a theft */
    if (!python && (frame[0] & 1)) python = 1; /* broadcast/multicast: flood, groups, gateway */
    if (!python) {
        v = PyObject_GetAttr(sw, N.snoop);
        if (v == NULL) goto done;
        if (v != Py_None && is_neighbour_frame(frame, flen)) python = 1;
        Py_CLEAR(v);
    }
    if (!python) {
        v = PyObject_GetAttr(sw, N.gateway);
        if (v == NULL) goto done;
        if (v != Py_None) {
            PyObject *gmac = PyObject_GetAttr(sw, N.gateway_mac);
            if (gmac == NULL) goto done;
            if (!PyBytes_Check(gmac) || PyBytes_GET_SIZE(gmac) < 6 ||
                memcmp(PyBytes_AS_STRING(gmac), frame, 6) == 0)
                python = 1;
            Py_DECREF(gmac);
        }
        Py_CLEAR(v);
    }
    if (!python) {
        int on = mirroring(sw);
        if (on < 0) goto done;
        if (on) python = 1;
    }
    if (!python) {
        fdb = PyObject_GetAttr(sw, N.fdb);
        if (fdb == NULL) goto done;
        if (!PyDict_Check(fdb)) {
            python = 1;
        } else {
            dmac = PyBytes_FromStringAndSize((const char *)frame, 6);
            if (dmac == NULL) goto done;
            dst = PyDict_GetItemWithError(fdb, dmac); /* borrowed */
            if (dst == NULL) {
                if (PyErr_Occurred()) goto done;
                python = 1; /* unknown destination: flood (storm control, proxy ARP) */
            } else {
                Py_INCREF(dst);
            }
        }
    }
    if (!python && PyLong_Check(dst)) {
        /* Behind a peer node: RuntimeRuntime._to_peer inline when the peer is live and the
         * node sealer is there (else it floods: the pure path). */
        PyObject *senders = PyObject_GetAttr(runtime, N.peer_senders);
        if (senders == NULL) goto done;
        peer_addr = PyDict_Check(senders) ? PyDict_GetItemWithError(senders, dst) : NULL;
        Py_XINCREF(peer_addr);
        Py_DECREF(senders);
        if (peer_addr == NULL && PyErr_Occurred()) goto done;
        node_sealer = PyObject_GetAttr(runtime, N.node_sealer);
        if (node_sealer == NULL) goto done;
        if (peer_addr == NULL || node_sealer == Py_None ||
            (!at && len + AT_OVERHEAD > N.fragment_size))
            python = 1; /* a big offloaded packet leaves cut, in one GSO send (send_super) */
        if (!python) {
            PyObject *send = PyObject_GetAttr(runtime, N.send);
            int ours = send ? PyObject_RichCompareBool(send, c->send, Py_EQ) : -1;
            Py_XDECREF(send);
            if (ours < 0) goto done;
            if (!ours) python = 1;
        }
    } else if (!python && dst != port) {
        seal = inline_seal(c, dst, at);
        if (seal == NULL && PyErr_Occurred()) goto done;
        if (seal == NULL && at) python = 1; /* segmented for the port: packet_from_local */
    }
    if (python) {
        payload = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
        if (payload == NULL) goto done;
        PyObject *args[2] = {port, payload};
        counts.steps++;
        rc = call_method(sw, at ? N.packet_from_local : N.from_local, args, 2);
        goto done;
    }
    /* Committed: the unicast case. */
    if (at_add_attr(port, N.frames_in, 1) < 0 || at_add_attr(port, N.bytes_in, (long long)flen) < 0 ||
        PyObject_SetAttr(port, N.fdb_at, c->now_obj) < 0)
        goto done;
    if (peer_addr != NULL) { /* to_peer: sealed once with the node key, to that node */
        if (c->noting) { /* client port -> the peer node: cache it */
            c->note.frame = frame;
            c->note.dst = NULL;
            c->note.sealer = node_sealer;
            c->note.dst_addr = peer_addr;
            if (at_engine_note(c->engine, &c->note) < 0) goto done;
        }
        if (seal_send(c, node_sealer, at ? AT_SUPERFRAME : AT_FRAME, data, len, peer_addr) < 0 ||
            at_add_attr(sw, N.frames_to_peers, 1) < 0)
            goto done;
        counts.inline_++;
        rc = 0;
        goto done;
    }
    if (dst == port) { /* a host behind the sender's own port: not sent back (no hairpin) */
        counts.inline_++;
        rc = 0;
        goto done;
    }
    if (c->noting && seal != NULL) { /* client port -> client port: cache it */
        if (note_to_port(c, frame, dst, seal) < 0) goto done;
    }
    rc = deliver_to(c, dst, seal, data, len, at, frame, flen);
done:
    Py_XDECREF(fdb_mac);
    Py_XDECREF(v);
    Py_XDECREF(fdb);
    Py_XDECREF(dmac);
    Py_XDECREF(dst);
    Py_XDECREF(seal);
    Py_XDECREF(payload);
    Py_XDECREF(peer_addr);
    Py_XDECREF(node_sealer);
    return rc;
}

/* offload.check for the common case (no GSO): 1 when it passes. Anything else (a GSO type,
 * a bad header) goes to the pure path's _valid_packet, which counts the reason. */
static int plain_offload(const uint8_t *p, size_t len) {
    if (len < AT_VNET_HDR_LEN + AT_ETH_MIN || p[1] != 0) return 0;
    if (p[0] & 1) {
        size_t frame_len = len - AT_VNET_HDR_LEN;
        size_t start = p[6] | (size_t)p[7] << 8, offset = p[8] | (size_t)p[9] << 8;
        if (start < AT_ETH_MIN || start + offset + 2 > frame_len) return 0;
    }
    return 1;
}

/* offload.check, whole (a GSO super-frame too): 1 when it passes, 0 when it raises — then the
 * pure path's _valid_packet runs and counts the reason. The same tests in the same arithmetic
 * (the fields are 16-bit, so nothing here overflows). */
static int offload_ok(const uint8_t *p, size_t n) {
    if (n < AT_VNET_HDR_LEN + AT_ETH_MIN) return 0;
    unsigned flags = p[0], gso_type = p[1];
    size_t gso_size = p[4] | (size_t)p[5] << 8;
    size_t start = p[6] | (size_t)p[7] << 8, offset = p[8] | (size_t)p[9] << 8;
    unsigned base = gso_type & ~0x80u; /* GSO_ECN */
    if (base != 0 && base != 1 && base != 4 && base != 5) return 0; /* _GSO_TYPES */
    size_t frame_len = n - AT_VNET_HDR_LEN;
    if ((flags & 1) && !(start >= AT_ETH_MIN && start + offset + 2 <= frame_len)) return 0;
    if (gso_type != 0) {
        if (gso_size == 0 || !(flags & 1)) return 0; /* gso_header */
        /* here flags & 1, so start < frame_len: the ceiling division of a positive length */
        size_t segments = (frame_len - start + gso_size - 1) / gso_size;
        if (segments > 65535 / 48 || segments * start > 2 * frame_len) return 0; /* gso_size */
    }
    return 1;
}

/* Whether a flow may be recorded in the node engine's cache: frames, and offloaded packets
 * without GSO that go out as one datagram (the engine carries frames only). */
static int engine_kind(const uint8_t *data, size_t len, size_t at) {
    return !at || (plain_offload(data, len) && len + AT_OVERHEAD <= N.fragment_size);
}

/* NetworkRuntime._from_peer's common case for a frame (at 0) or an offloaded packet without GSO
 * (at 10) a peer node sent, opened: Switch.from_peer / packet_from_peer to the one local port
 * its destination was learned behind, the source already known behind that peer. Else the pure
 * _from_peer (runt, no local ports, a bad offload header, learning, flooding, snooping,
 * mirrors, a port that needs standard frames). */
static int from_peer(Ctx *c, PyObject *runtime, PyObject *sw, PyObject *sender_obj,
                     const uint8_t *data, size_t len, size_t at) {
    int rc = -1, python = 0;
    PyObject *v = NULL, *fdb = NULL, *smac = NULL, *dmac = NULL, *dst = NULL, *seal = NULL;
    PyObject *payload = NULL, *seen = NULL;
    const uint8_t *frame = data + at;
    size_t flen = len - at;
    if (at ? !offload_ok(data, len) : len < AT_ETH_MIN) python = 1; /* counted there */
    if (!python) {
        Py_ssize_t ports = PyObject_Size(sw);
        if (ports < 0) goto done;
        if (ports == 0) python = 1; /* no_local_ports, and maybe "stale" */
    }
    if (!python) {
        v = PyObject_GetAttr(sw, N.snoop);
        if (v == NULL) goto done;
        if (v != Py_None && is_neighbour_frame(frame, flen)) python = 1;
        Py_CLEAR(v);
    }
    if (!python && (frame[0] & 1)) python = 1;
    if (!python) {
        int on = mirroring(sw);
        if (on < 0) goto done;
        if (on) python = 1;
    }
    if (!python) {
        fdb = PyObject_GetAttr(sw, N.fdb);
        if (fdb == NULL) goto done;
        if (!PyDict_Check(fdb)) {
            python = 1;
        } else {
            smac = PyBytes_FromStringAndSize((const char *)frame + 6, 6);
            dmac = smac ? PyBytes_FromStringAndSize((const char *)frame, 6) : NULL;
            if (dmac == NULL) goto done;
            PyObject *owner = PyDict_GetItemWithError(fdb, smac); /* borrowed */
            if (owner == NULL && PyErr_Occurred()) goto done;
            int same = 0;
            if (owner != NULL && PyLong_Check(owner)) {
                same = PyObject_RichCompareBool(owner, sender_obj, Py_EQ);
                if (same < 0) goto done;
            }
            if (!same) python = 1; /* learning the source behind this peer */
            dst = python ? NULL : PyDict_GetItemWithError(fdb, dmac); /* borrowed */
            if (dst == NULL) {
                if (PyErr_Occurred()) goto done;
                python = 1; /* unknown here: to every local port */
            } else {
                Py_INCREF(dst);
                if (PyLong_Check(dst)) python = 1; /* behind another node: dropped there */
            }
        }
    }
    if (!python) {
        seal = inline_seal(c, dst, at);
        if (seal == NULL && PyErr_Occurred()) goto done;
        if (seal == NULL && at) python = 1; /* segmented for the port: packet_from_peer */
        seen = PyObject_GetAttr(sw, N.fdb_seen);
        if (seen == NULL) goto done;
        if (!PyDict_Check(seen)) python = 1;
    }
    if (python) {
        payload = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
        PyObject *ptype = payload ? PyLong_FromLong(at ? AT_SUPERFRAME : AT_FRAME) : NULL;
        if (ptype == NULL) goto done;
        PyObject *args[3] = {payload, ptype, sender_obj};
        counts.steps++;
        rc = call_method(runtime, N.from_peer_, args, 3);
        Py_DECREF(ptype);
        goto done;
    }
    /* Committed: from_peer's (packet_from_peer's) unicast case. */
    if (at_add_attr(sw, N.frames_from_peers, 1) < 0 || PyDict_SetItem(seen, smac, c->now_obj) < 0)
        goto done;
    if (c->noting && seal != NULL) { /* the peer node -> a client port: cache it */
        if (note_to_port(c, frame, dst, seal) < 0) goto done;
    }
    rc = deliver_to(c, dst, seal, data, len, at, frame, flen);
done:
    Py_XDECREF(v);
    Py_XDECREF(fdb);
    Py_XDECREF(smac);
    Py_XDECREF(dmac);
    Py_XDECREF(dst);
    Py_XDECREF(seal);
    Py_XDECREF(payload);
    Py_XDECREF(seen);
    return rc;
}

/* from_local, with what the engine needs to cache the flow should it take its inline branch
 * (c->engine set: the daemon runs a NodeEngine). */
static int noted_from_local(Ctx *c, PyObject *runtime, PyObject *sw, PyObject *port,
                            const uint8_t *data, size_t len, size_t at, const uint8_t *packet,
                            PyObject *addr, PyObject *opener, PyObject *w, double rate,
                            double burst) {
    if (c->engine == NULL || !engine_kind(data, len, at))
        return from_local(c, runtime, sw, port, data, len, at);
    Py_INCREF(w); /* held while from_local runs */
    c->note = (AtEngineNote){packet, NULL, addr, opener, w, port, c->core, sw, NULL, NULL,
                             NULL, rate, burst, N.fragment_size};
    c->noting = 1;
    int rc = from_local(c, runtime, sw, port, data, len, at);
    c->noting = 0;
    Py_DECREF(w);
    return rc;
}

/* One whole sealed datagram (not a fragment). 0, or -1 with a Python exception set. */
static int node_one(Ctx *c, const uint8_t *data, size_t len, PyObject *addr) {
    int rc = -1;
    PyObject *networks = NULL, *netid = NULL, *runtime = NULL, *openers = NULL, *key_obj = NULL;
    PyObject *opener = NULL, *clients = NULL, *ckey = NULL, *port = NULL, *windows = NULL;
    PyObject *sender_obj = NULL, *fresh = NULL, *sw = NULL, *limits = NULL, *port_addr = NULL;

    int ptype = len >= AT_OVERHEAD ? data[AT_TYPE_AT] : 0;
    if (len < AT_OVERHEAD || data[AT_VERSION_AT] != AT_VERSION ||
        (ptype != AT_FRAME && ptype != AT_SUPERFRAME)) {
        counts.python++;
        return pure_datagram(c, data, len, addr); /* counted drops, control messages */
    }
    uint32_t key_id = at_be32(data + AT_KEY_ID_AT);
    uint32_t sender_id = at_be32(data + AT_SENDER_AT);
    uint64_t counter = at_be64(data + AT_COUNTER_AT);

    /* Everything that could send it elsewhere, looked up before anything changes. */
    networks = PyObject_GetAttr(c->core, N.networks);
    if (networks == NULL) goto done;
    netid = PyBytes_FromStringAndSize((const char *)data, AT_NETWORK_ID_LEN);
    if (netid == NULL) goto done;
    runtime = PyObject_GetItem(networks, netid);
    if (runtime == NULL) goto slow_clear;
    openers = PyObject_GetAttr(runtime, N.openers);
    if (openers == NULL) goto done;
    key_obj = PyLong_FromUnsignedLong(key_id);
    if (key_obj == NULL) goto done;
    /* Per packet: revocation pops the opener, so the next datagram of that key goes to the
     * pure path (revoked_key) at once. */
    opener = PyObject_GetItem(openers, key_obj);
    if (opener == NULL) goto slow_clear;
    sender_obj = PyLong_FromUnsignedLong(sender_id);
    if (sender_obj == NULL) goto done;
    if (key_id != 0) { /* key 0: a peer node, no port */
        clients = PyObject_GetAttr(runtime, N.clients);
        if (clients == NULL) goto done;
        ckey = PyTuple_Pack(2, key_obj, sender_obj);
        if (ckey == NULL) goto done;
        port = PyObject_GetItem(clients, ckey);
        if (port == NULL) goto slow_clear; /* no port: only a bound hello opens one */
    }
    windows = PyObject_GetAttr(opener, at_names.s_windows);
    if (windows == NULL) goto done;
    if (!PyDict_Check(windows)) goto slow;
    PyObject *w = PyDict_GetItemWithError(windows, sender_obj); /* borrowed */
    if (w == NULL && PyErr_Occurred()) goto done;
    if (w == NULL || !PyObject_TypeCheck(w, &AtWindow_Type)) goto slow; /* first packet */

    /* Committed: NodeCore.datagram's and NetworkRuntime.packet's common case. */
    if (at_add_attr(c->core, N.datagrams, 1) < 0) goto done;
    fresh = PyObject_GetAttr(c->core, N.freshness);
    if (fresh == NULL) goto done;
    double fnow;
    if (get_double(fresh, N.now, &fnow) < 0) goto done;
    if (fnow != c->now) {
        PyObject *args[1] = {c->now_obj};
        if (call_method(fresh, N.set_now, args, 1) < 0) goto done;
    }
    sw = PyObject_GetAttr(runtime, N.switch_);
    if (sw == NULL || PyObject_SetAttr(sw, N.now, c->now_obj) < 0) goto done;
    const char *reason = NULL;
    PyObject *drops = NULL;
    size_t plen = len - AT_OVERHEAD;
    if (port == NULL) { /* from a peer node: no bucket, then NetworkRuntime._from_peer */
        int opened = at_opener_open(opener, data, len, sender_id, counter, obuf, &reason);
        if (opened < 0) goto done;
        if (opened == AT_OPEN_SLOW) goto slow_packet; /* cannot happen: the window was there */
        if (opened == AT_OPEN_DROP) {
            drops = PyObject_GetAttr(runtime, N.drops);
            counts.inline_++;
            rc = drops ? at_count(drops, reason, 1) : -1;
            Py_XDECREF(drops);
            goto done;
        }
        size_t at = ptype == AT_SUPERFRAME ? AT_VNET_HDR_LEN : 0;
        if (c->engine != NULL && engine_kind(obuf, plen, at)) { /* from_peer may cache it */
            Py_INCREF(w);
            c->note = (AtEngineNote){data, NULL, addr, opener, w, NULL, c->core, sw, NULL, NULL,
                                     NULL, 0.0, 0.0, N.fragment_size};
            c->noting = 1;
        }
        rc = from_peer(c, runtime, sw, sender_obj, obuf, plen, at);
        if (c->noting) {
            c->noting = 0;
            Py_DECREF(w);
        }
        goto done;
    }
    /* The port's token bucket, before any crypto; charged below only once it authenticated. */
    double rate, burst, tokens, bucket_at;
    limits = PyObject_GetAttr(runtime, N.limits);
    if (limits == NULL || get_double(limits, N.rate, &rate) < 0 ||
        get_double(limits, N.burst, &burst) < 0 || get_double(port, N.tokens, &tokens) < 0 ||
        get_double(port, N.bucket_at, &bucket_at) < 0)
        goto done;
    tokens = tokens + (c->now - bucket_at) * rate;
    if (set_double(port, N.tokens, tokens < burst ? tokens : burst) < 0 ||
        PyObject_SetAttr(port, N.bucket_at, c->now_obj) < 0)
        goto done;
    if (tokens < 1.0) {
        drops = PyObject_GetAttr(runtime, N.drops);
        counts.inline_++;
        rc = drops ? at_count(drops, "port_rate", 1) : -1;
        Py_XDECREF(drops);
        goto done;
    }
    int opened = at_opener_open(opener, data, len, sender_id, counter, obuf, &reason);
    if (opened < 0) goto done;
    if (opened == AT_OPEN_SLOW) goto slow_packet; /* cannot happen: the window was there */
    if (opened == AT_OPEN_DROP) {
        drops = PyObject_GetAttr(runtime, N.drops);
        counts.inline_++;
        rc = drops ? at_count(drops, reason, 1) : -1;
        Py_XDECREF(drops);
        goto done;
    }
    tokens = tokens < burst ? tokens : burst;
    if (set_double(port, N.tokens, tokens - 1.0) < 0) goto done;
    port_addr = PyObject_GetAttr(port, N.addr);
    if (port_addr == NULL) goto done;
    int same = PyObject_RichCompareBool(port_addr, addr, Py_EQ);
    if (same < 0) goto done;
    if (!same) { /* the client roamed or its NAT rebound: follow it */
        PyObject *args[2] = {port, addr};
        if (call_method(runtime, N.roam, args, 2) < 0) goto done;
    }
    if (PyObject_SetAttr(port, N.last_seen, c->now_obj) < 0) goto done;
    if (ptype == AT_SUPERFRAME) {
        if (offload_ok(obuf, plen)) { /* _valid_packet passes it, counting nothing */
            rc = noted_from_local(c, runtime, sw, port, obuf, plen, AT_VNET_HDR_LEN, data, addr,
                                  opener, w, rate, burst);
            goto done;
        }
        /* NetworkRuntime.packet's own steps: _valid_packet counts it, then the switch. */
        PyObject *payload = PyBytes_FromStringAndSize((const char *)obuf, (Py_ssize_t)plen);
        if (payload == NULL) goto done;
        PyObject *r = PyObject_CallMethodOneArg(runtime, N.valid_packet, payload);
        int valid = r ? PyObject_IsTrue(r) : -1;
        Py_XDECREF(r);
        if (valid > 0) {
            PyObject *args[2] = {port, payload};
            valid = call_method(sw, N.packet_from_local, args, 2) < 0 ? -1 : 0;
        }
        Py_DECREF(payload);
        counts.steps++;
        rc = valid < 0 ? -1 : 0;
        goto done;
    }
    if (plen < AT_ETH_MIN) {
        drops = PyObject_GetAttr(runtime, N.drops);
        counts.inline_++;
        rc = drops ? at_count(drops, "runt", 1) : -1;
        Py_XDECREF(drops);
        goto done;
    }
    rc = noted_from_local(c, runtime, sw, port, obuf, plen, 0, data, addr, opener, w, rate, burst);
    goto done;

slow_packet: {
    /* NetworkRuntime.packet from the start of its own work (datagram's part is done). */
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    if (bytes == NULL) goto done;
    PyObject *ptype = PyLong_FromLong(data[AT_TYPE_AT]);
    PyObject *ctr = PyLong_FromUnsignedLongLong(counter);
    if (ptype != NULL && ctr != NULL) {
        PyObject *args[7] = {bytes, addr, ptype, key_obj, sender_obj, ctr, c->now_obj};
        rc = call_method(runtime, N.packet, args, 7);
    }
    Py_DECREF(bytes);
    Py_XDECREF(ptype);
    Py_XDECREF(ctr);
    goto done;
}
slow_clear:
    if (!PyErr_ExceptionMatches(PyExc_KeyError)) goto done;
    PyErr_Clear();
slow:
    counts.python++;
    rc = pure_datagram(c, data, len, addr);
done:
    Py_XDECREF(networks);
    Py_XDECREF(netid);
    Py_XDECREF(runtime);
    Py_XDECREF(openers);
    Py_XDECREF(key_obj);
    Py_XDECREF(opener);
    Py_XDECREF(clients);
    Py_XDECREF(ckey);
    Py_XDECREF(port);
    Py_XDECREF(windows);
    Py_XDECREF(sender_obj);
    Py_XDECREF(fresh);
    Py_XDECREF(sw);
    Py_XDECREF(limits);
    Py_XDECREF(port_addr);
    return rc;
}

/* Fragments (and a run that starts with one) to the UdpSocket's reassembler, then each whole
 * packet to core.datagram: UdpSocket.receive's own path. */
static int pure_feed(Ctx *c, const uint8_t *data, size_t len, long segment, PyObject *addr) {
    int rc = -1;
    PyObject *bytes = NULL, *re = NULL, *seg = NULL, *out = NULL, *it = NULL, *packet;
    counts.python++;
    bytes = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    re = bytes ? PyObject_GetAttr(c->udp, N.reassembler) : NULL;
    seg = re ? PyLong_FromLong(segment) : NULL;
    if (seg == NULL) goto done;
    PyObject *argv[4] = {re, bytes, seg, addr};
    out = PyObject_VectorcallMethod(N.feed, argv, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    it = out ? PyObject_GetIter(out) : NULL;
    if (it == NULL) goto done;
    while ((packet = PyIter_Next(it)) != NULL) {
        PyObject *args[3] = {packet, addr, c->now_obj};
        int r = call_method(c->core, N.datagram, args, 3);
        Py_DECREF(packet);
        if (r < 0) goto done;
    }
    if (!PyErr_Occurred()) rc = 0;
done:
    Py_XDECREF(bytes);
    Py_XDECREF(re);
    Py_XDECREF(seg);
    Py_XDECREF(out);
    Py_XDECREF(it);
    return rc;
}

static int segment_hold(size_t run) { return run != 0; } /* a GRO run is held as receive() */

static int start_holding(Ctx *c, int *holding) {
    PyObject *r = PyObject_CallMethodNoArgs(c->udp, N.hold);
    if (r == NULL) return -1;
    *holding = PyObject_IsTrue(r);
    Py_DECREF(r);
    return *holding < 0 ? -1 : 0;
}

/* One read's datagrams: a single one, or a GRO run split by its segment size. In a run, a
 * whole packet's fragments (a super-frame's GSO send) are joined here (at_frag_join, into jbuf)
 * and go to node_one as the one datagram they stand for, in order with the datagrams around
 * them — what UdpSocket.receive's Reassembler.feed hands to NodeCore.datagram. Fragments that
 * do not make a whole packet in this run (a run cut short, a lone or stray fragment) go to the
 * pure Reassembler (pure_feed), which owns the bounded pending table and `dropped`: each stretch
 * of them up to the next datagram or whole packet, as one sub-run. */
static int node_read(Ctx *c, size_t n, long segment, PyObject *addr) {
    if (segment <= 0 || (size_t)segment >= n) {
        if (n > AT_TYPE_AT && rbuf[AT_TYPE_AT] == AT_FRAGMENT) return pure_feed(c, rbuf, n, 0, addr);
        return node_one(c, rbuf, n, addr);
    }
    size_t seg = (size_t)segment, at = 0, used = 0;
    while (at < n) {
        size_t piece = n - at < seg ? n - at : seg;
        if (!(piece > AT_TYPE_AT && rbuf[at + AT_TYPE_AT] == AT_FRAGMENT)) {
            if (node_one(c, rbuf + at, piece, addr) < 0) return -1;
            at += seg;
            continue;
        }
        size_t size = at_frag_join(rbuf + at, n - at, seg, NULL, &used);
        if (size && size <= sizeof jbuf) {
            at_frag_join(rbuf + at, n - at, seg, jbuf, &used);
            counts.joined++;
            if (node_one(c, jbuf, size, addr) < 0) return -1;
            at += used;
            continue;
        }
        size_t end = at + seg;
        while (end < n) {
            size_t next = n - end < seg ? n - end : seg;
            if (!(next > AT_TYPE_AT && rbuf[end + AT_TYPE_AT] == AT_FRAGMENT) ||
                at_frag_join(rbuf + end, n - end, seg, NULL, &used))
                break;
            end += seg;
        }
        if (end > n) end = n;
        if (pure_feed(c, rbuf + at, end - at, segment, addr) < 0) return -1;
        at = end;
    }
    return 0;
}

static PyObject *node_receive(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *core, *udp, *now_obj, *engine = Py_None, *first = Py_None;
    int max_reads;
    if (!PyArg_ParseTuple(args, "OOiO|OO", &core, &udp, &max_reads, &now_obj, &engine, &first))
        return NULL;
    if (node_names() < 0) return NULL;
    /* `first`: a NodeEngine's handed-over (data, addr, segment), taken as the first read. */
    Py_buffer fbuf = {0};
    PyObject *faddr = NULL;
    Py_ssize_t fseg = 0;
    if (first != Py_None) {
        if (!PyArg_ParseTuple(first, "y*On", &fbuf, &faddr, &fseg)) return NULL;
        size_t flen = (size_t)fbuf.len;
        if (flen > AT_RECV_SIZE || fseg < 0) {
            PyBuffer_Release(&fbuf);
            PyErr_SetString(PyExc_ValueError, "a handed-over datagram is at most 65535 bytes");
            return NULL;
        }
    }
    if (busy) {
        PyErr_SetString(PyExc_RuntimeError, "node_receive is not re-entrant");
        return NULL;
    }
    Ctx c = {core, udp, now_obj, NULL, PyFloat_AsDouble(now_obj), -1};
    c.engine = engine != Py_None ? engine : NULL;
    PyObject *fileno = NULL;
    if (c.now == -1.0 && PyErr_Occurred()) goto early;
    fileno = PyObject_CallMethod(udp, "fileno", NULL);
    if (fileno == NULL) goto early;
    c.fd = (int)PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (c.fd == -1 && PyErr_Occurred()) goto early;
    c.send = PyObject_GetAttr(core, N.send);
    if (c.send == NULL) {
    early:
        if (first != Py_None) PyBuffer_Release(&fbuf);
        return NULL;
    }

    busy = 1;
    int holding = 0, failed = 0;
    for (int reads = 0; reads < max_reads; reads++) {
        struct sockaddr_storage from;
        size_t run = 0;
        ssize_t n;
        if (reads == 0 && first != Py_None) {
            n = fbuf.len;
            memcpy(rbuf, fbuf.buf, (size_t)n);
            run = (size_t)fseg;
            PyBuffer_Release(&fbuf);
            if (segment_hold(run) && !holding && start_holding(&c, &holding) < 0) {
                failed = 1;
                break;
            }
            int r = node_read(&c, (size_t)n, (long)run, faddr);
            if (r < 0) {
                failed = 1;
                break;
            }
            continue;
        }
        n = at_recv_gro(c.fd, rbuf, AT_RECV_SIZE, &from, &run);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            continue; /* e.g. ICMP errors reported on the socket: not ours to stop on */
        }
        if (reads && !holding && start_holding(&c, &holding) < 0) {
            failed = 1;
            break;
        }
        long segment = (long)run;
        if (segment && !holding && start_holding(&c, &holding) < 0) {
            failed = 1;
            break;
        }
        if (from.ss_family != AF_INET) continue; /* the node's socket is IPv4 */
        PyObject *addr = make_addr((struct sockaddr_in *)&from);
        if (addr == NULL) {
            failed = 1;
            break;
        }
        int r = node_read(&c, (size_t)n, segment, addr);
        Py_DECREF(addr);
        if (r < 0) {
            failed = 1;
            break;
        }
    }
    busy = 0;
    Py_DECREF(c.send);
    if (holding) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *r = PyObject_CallMethodNoArgs(udp, N.release);
        if (r == NULL) {
            if (type != NULL) PyErr_Clear(); /* the first error wins */
            else failed = 1;
        }
        Py_XDECREF(r);
        if (type != NULL) PyErr_Restore(type, value, tb);
    }
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyObject *node_counters(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused)) {
    return Py_BuildValue("{sKsKsKsKsK}", "inline", counts.inline_, "python", counts.python,
                         "python_steps", counts.steps, "joined", counts.joined, "inline_super",
                         counts.super_);
}

/* offload_check(packet) -> bool: offload_ok, for tests/test_fast_node_read.py to hold it
 * against offload.check on random headers. */
static PyObject *node_offload_check(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    int ok = offload_ok(buf.buf, (size_t)buf.len);
    PyBuffer_Release(&buf);
    return PyBool_FromLong(ok);
}

PyMethodDef at_node_methods[] = {
    {"offload_check", node_offload_check, METH_O,
     "offload_check(packet) -> bool: whether node_receive's C offload.check passes it (any "
     "refusal goes to the pure _valid_packet, which counts the reason)"},
    {"node_counters", node_counters, METH_NOARGS,
     "node_counters() -> {inline, python, python_steps, joined, inline_super}: datagrams "
     "node_receive forwarded whole in C, handed whole to the pure path, and opened in C with "
     "a pure step after; packets joined in C from a GRO run's fragments; super-frames sealed, "
     "cut and sent as one GSO send in C"},
    {"node_receive", node_receive, METH_VARARGS,
     "node_receive(core, udp, max_reads, now, engine=None, first=None): UdpSocket.receive + "
     "NodeCore.datagram for the node daemon, the common case in C (see csrc/fast/node.c); "
     "with a NodeEngine, `first` is its handed-over (data, addr, segment), taken before the "
     "socket is read, and the flows forwarded inline are recorded in its cache"},
    {NULL}};
