//! Wall-clock times (what policies and grants are written in) converted to the clock the
//! programs compare edge windows with: `CLOCK_BOOTTIME`, nanoseconds since boot, read in the
//! kernel by `bpf_ktime_get_boot_ns`. The conversion is fixed when an edge is written: a later
//! step of the wall clock (NTP, an operator) does not move a deadline already in the kernel.

use enforcer_common::maps::NEVER;
use jiff::Timestamp;

/// One reading of both clocks, taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clocks {
    /// Nanoseconds since the Unix epoch.
    pub wall: i128,
    /// Nanoseconds since boot.
    pub boot: u64,
}

impl Clocks {
    /// Reads both clocks. The wall clock is read on both sides of the boot clock and
    /// averaged, so the pair is off by at most half the time between the two reads.
    pub fn now() -> Self {
        let before = read(libc::CLOCK_REALTIME);
        let boot = read(libc::CLOCK_BOOTTIME);
        let after = read(libc::CLOCK_REALTIME);
        Self {
            wall: (before + after) / 2,
            boot: u64::try_from(boot).unwrap_or(0),
        }
    }

    /// The boot-clock nanosecond at which the wall clock shows `at`. A time before boot is
    /// 0 (long past for every comparison); one beyond the boot clock's range is [`NEVER`].
    pub fn boot_ns(&self, at: Timestamp) -> u64 {
        let target = i128::from(self.boot) + (at.as_nanosecond() - self.wall);
        if target <= 0 {
            0
        } else {
            u64::try_from(target).unwrap_or(NEVER)
        }
    }

    /// The wall-clock time of boot-clock nanosecond `boot_ns`.
    pub fn wall_time(&self, boot_ns: u64) -> Timestamp {
        let wall = self.wall + (i128::from(boot_ns) - i128::from(self.boot));
        Timestamp::from_nanosecond(wall).unwrap_or(Timestamp::MAX)
    }

    pub fn wall_now(&self) -> Timestamp {
        Timestamp::from_nanosecond(self.wall).unwrap_or(Timestamp::MAX)
    }
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; both clocks exist on every Linux we run on.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("test timestamp")
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_wall_time_lands_at_the_same_distance_on_the_boot_clock() {
        let clocks = Clocks {
            wall: at("2026-11-23T10:00:00Z").as_nanosecond(),
            boot: 500 * SEC,
        };
        assert_eq!(clocks.boot_ns(at("2026-11-23T10:00:03Z")), 503 * SEC);
        assert_eq!(clocks.boot_ns(at("2026-11-23T09:59:00Z")), 440 * SEC);
        assert_eq!(
            clocks.boot_ns(at("2026-11-23T11:00:00+01:00")),
            500 * SEC,
            "offsets are honoured"
        );
        assert_eq!(clocks.boot_ns(at("2026-01-01T00:00:00Z")), 0, "before boot");
        assert_eq!(
            clocks.boot_ns(Timestamp::MAX),
            NEVER,
            "beyond the boot clock"
        );
        assert_eq!(clocks.wall_time(503 * SEC), at("2026-11-23T10:00:03Z"));
    }

    #[test]
    fn the_conversion_matches_the_kernel_clocks_now() {
        let clocks = Clocks::now();
        let in_a_minute = Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let boot = clocks.boot_ns(in_a_minute);
        let expected = clocks.boot + 60 * SEC;
        // Readings a few milliseconds apart; the conversion must not be off by more.
        assert!(boot.abs_diff(expected) < SEC / 10, "{boot} vs {expected}");
        let now_boot = u64::try_from(read(libc::CLOCK_BOOTTIME)).expect("boot clock");
        assert!(now_boot >= clocks.boot && now_boot - clocks.boot < SEC);
    }
}
