//! Latency samples and their summary.

use std::time::Duration;

/// Latencies of one measured operation.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    /// The `q`-quantile by nearest rank (0.5: median, 0.99: p99).
    pub fn quantile(&self, q: f64) -> Duration {
        assert!(!self.0.is_empty(), "no samples");
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

/// Milliseconds with three decimals.
pub fn ms(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64() * 1000.0)
}

/// `ours / baseline`, two decimals.
pub fn ratio(ours: f64, baseline: f64) -> String {
    format!("{:.2}×", ours / baseline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut samples = Samples::default();
        for millis in (1..=200).rev() {
            samples.push(Duration::from_millis(millis));
        }
        assert_eq!(samples.median(), Duration::from_millis(100));
        assert_eq!(samples.p99(), Duration::from_millis(198));
        assert_eq!(samples.quantile(1.0), Duration::from_millis(200));
        assert_eq!(samples.quantile(0.0), Duration::from_millis(1));
    }
}
