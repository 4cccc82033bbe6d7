//! The property-test settings of this crate's `sql` properties, the same as the policy
//! crate's: 10,000 cases unless `PROPTEST_CASES` says otherwise, and `Reach`, which counts
//! the cases that reached the assertion (the policy crate's, whose tests-only module this
//! crate cannot import).

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::ProptestConfig;

pub(crate) fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Counts the cases of one property test and those that reached its assertion. `check`, after
/// the run, prints `property <name>: <reached> of <cases> cases reached the assertion` and
/// fails when fewer than [`MIN_REACHED_PERCENT`] of the cases did.
pub(crate) struct Reach {
    name: &'static str,
    cases: AtomicU64,
    reached: AtomicU64,
}

/// The least share of a property test's cases that must reach its assertion.
pub(crate) const MIN_REACHED_PERCENT: u64 = 20;

impl Reach {
    pub(crate) const fn new(name: &'static str) -> Reach {
        Reach { name, cases: AtomicU64::new(0), reached: AtomicU64::new(0) }
    }

    /// One case run (after any `prop_assume!`, whose rejected cases proptest does not count).
    pub(crate) fn case(&self) {
        self.cases.fetch_add(1, Ordering::Relaxed);
    }

    /// This case reached the assertion.
    pub(crate) fn reached(&self) {
        self.reached.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn check(&self) {
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
