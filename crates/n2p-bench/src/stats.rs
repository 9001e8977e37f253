//! Summaries of repeated measurements: median, min and max, and ratios taken per round.
//!
//! ```ignore
//! let s = Summary::of(&[3.0, 1.0, 2.0]).expect("not empty");
//! assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
//! ```

use serde::Serialize;

/// Median, minimum and maximum of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Summary {
    /// The middle sample (the mean of the two middle ones for an even count).
    pub(crate) median: f64,
    /// The smallest sample.
    pub(crate) min: f64,
    /// The largest sample.
    pub(crate) max: f64,
    /// How many samples.
    pub(crate) n: usize,
}

impl Summary {
    /// Summarises `samples`; None when there are none (NaNs are ignored).
    pub(crate) fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            n,
        })
    }
}

/// The median of `samples`, or None when there are none.
pub(crate) fn median(samples: &[f64]) -> Option<f64> {
    Summary::of(samples).map(|s| s.median)
}

/// Ratios `variant[i] / baseline[i]` of the rounds where both were measured (`None` marks a
/// round that failed or was skipped).
pub(crate) fn round_ratios(variant: &[Option<f64>], baseline: &[Option<f64>]) -> Vec<f64> {
    variant
        .iter()
        .zip(baseline)
        .filter_map(|pair| match pair {
            (Some(v), Some(b)) if *b > 0.0 => Some(v / b),
            _ => None,
        })
        .collect()
}

/// Per-round differences `variant - baseline`, for rounds where both were measured.
pub(crate) fn round_differences(variant: &[Option<f64>], baseline: &[Option<f64>]) -> Vec<f64> {
    variant
        .iter()
        .zip(baseline)
        .filter_map(|pair| match pair {
            (Some(v), Some(b)) => Some(v - b),
            _ => None,
        })
        .collect()
}

/// `items` rotated left by `round` places: round `r` of an interleaved benchmark starts with
/// a different variant, so that no variant always runs first (or right after another).
pub(crate) fn rotated<T: Clone>(items: &[T], round: usize) -> Vec<T> {
    if items.is_empty() {
        return Vec::new();
    }
    let k = round % items.len();
    items[k..].iter().chain(&items[..k]).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn summary_has_min_max_and_count() {
        let s = Summary::of(&[0.5, 9.0, 2.0, 1.0, 3.0]).expect("samples");
        assert_eq!(s.median, 2.0);
        assert_eq!(s.min, 0.5);
        assert_eq!(s.max, 9.0);
        assert_eq!(s.n, 5);
    }

    #[test]
    fn ratios_skip_rounds_missing_either_side() {
        let variant = [Some(2.0), None, Some(3.0), Some(4.0)];
        let baseline = [Some(1.0), Some(1.0), None, Some(2.0)];
        assert_eq!(round_ratios(&variant, &baseline), vec![2.0, 2.0]);
    }

    #[test]
    fn median_of_round_ratios_differs_from_ratio_of_medians() {
        // A slow round hits both variants; per-round ratios cancel it out.
        let variant = [Some(1.2), Some(1.2), Some(3.6)];
        let baseline = [Some(1.0), Some(1.0), Some(3.0)];
        assert_eq!(median(&round_ratios(&variant, &baseline)), Some(1.2));
    }

    #[test]
    fn rotation_starts_each_round_elsewhere() {
        let v = ["a", "b", "c"];
        assert_eq!(rotated(&v, 0), ["a", "b", "c"]);
        assert_eq!(rotated(&v, 1), ["b", "c", "a"]);
        assert_eq!(rotated(&v, 5), ["c", "a", "b"]);
        assert!(rotated::<u8>(&[], 3).is_empty());
    }
}
