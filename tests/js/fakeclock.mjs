// A fake monotonic clock with setTimeout/clearTimeout, for driving net.js's Host and
// Dhcp4Client through hours of lease time in no time (tests only).

export class FakeClock {
  constructor(start = 0) {
    this.t = start;
    this.queue = new Map(); // id → {at, fn}
    this.nextId = 1;
    this.now = () => this.t;
    this.timers = {
      setTimeout: (fn, ms) => {
        const id = this.nextId++;
        this.queue.set(id, { at: this.t + Math.max(0, Number(ms) || 0), fn });
        return id;
      },
      clearTimeout: (id) => {
        this.queue.delete(id);
      },
    };
  }

  /** Move time forward by `ms`, running every timer that falls due, in time order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, entry] of this.queue) {
        if (entry.at <= end && (next === null || entry.at < next[1].at)) next = [id, entry];
      }
      if (next === null) break;
      this.queue.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = end;
  }

  /** When the next timer is due (null: none). */
  nextAt() {
    let at = null;
    for (const entry of this.queue.values()) if (at === null || entry.at < at) at = entry.at;
    return at;
  }
}
