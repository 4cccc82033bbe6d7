//! How much of a property test's input reached its assertion. A property whose generator
//! makes input that is rejected before the property is checked proves nothing, so each
//! property test of the policy and engine crates counts its cases with [`Reach`], prints one
//! line tools read, and fails below [`MIN_REACHED_PERCENT`]. Shared by both crates' tests,
//! which is why it is compiled always; it has no dependency.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the cases of one property test and those that reached its assertion: a property
/// whose generator makes input rejected before the check proves nothing. `check`, after the
/// run, prints `property <name>: <reached> of <cases> cases reached the assertion` and fails
/// when fewer than [`MIN_REACHED_PERCENT`] of the cases did.
pub struct Reach {
    name: &'static str,
    cases: AtomicU64,
    reached: AtomicU64,
}

/// The least share of a property test's cases that must reach its assertion.
pub const MIN_REACHED_PERCENT: u64 = 20;

impl Reach {
    pub const fn new(name: &'static str) -> Reach {
        Reach { name, cases: AtomicU64::new(0), reached: AtomicU64::new(0) }
    }

    /// One case run (after any `prop_assume!`, whose rejected cases proptest does not count).
    pub fn case(&self) {
        self.cases.fetch_add(1, Ordering::Relaxed);
    }

    /// This case reached the assertion.
    pub fn reached(&self) {
        self.reached.fetch_add(1, Ordering::Relaxed);
    }

    pub fn check(&self) {
        let (cases, reached) = (self.cases.load(Ordering::Relaxed), self.reached.load(Ordering::Relaxed));
        println!("property {}: {reached} of {cases} cases reached the assertion", self.name);
        assert!(
            cases > 0 && reached * 100 >= cases * MIN_REACHED_PERCENT,
            "{}: fewer than {MIN_REACHED_PERCENT}% of the cases reached the assertion: the generator makes \
             mostly input rejected before the property is checked",
            self.name
        );
    }
}
