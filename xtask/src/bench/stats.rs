//! Median and spread of a set of samples.
use serde::Serialize;

/// Median, min and max of the samples (in the order they were taken).
#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    pub fn of(samples: Vec<f64>) -> Summary {
        let mut v = samples.clone();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Summary {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// `12345 unit (10000–14000)`, with `digits` decimals.
    pub fn show(&self, unit: &str, digits: usize) -> String {
        if self.is_empty() {
            return String::new();
        }
        format!(
            "{:.d$} {unit} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// p50 and p99 of `samples` (nearest rank; NaN when empty).
pub fn percentiles(samples: &[f64]) -> (f64, f64) {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    (at(0.50), at(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Summary::of(vec![3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Summary::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
        let s = Summary::of(vec![5.0, 1.0]);
        assert_eq!((s.min, s.max), (1.0, 5.0));
        assert_eq!(s.samples, vec![5.0, 1.0], "samples keep their order");
        assert!(Summary::of(Vec::new()).median.is_nan());
    }
}
