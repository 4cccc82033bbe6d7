//! The property-test settings of this crate's `sql` properties, the same as the policy
//! crate's: 10,000 cases unless `PROPTEST_CASES` says otherwise, and the policy crate's
//! [`Reach`], which counts the cases that reached the assertion.

use proptest::prelude::ProptestConfig;

pub(crate) use autouser_policy::property_reach::Reach;

pub(crate) fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}
