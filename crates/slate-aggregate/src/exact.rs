//! An exact float sum that values can leave as well as enter: the running sum is kept as a list
//! of non-overlapping partial sums (Shewchuk's algorithm), so adding and removing are exact and
//! the result is the correctly rounded sum of the values present, whatever order they came in.
//! A sliding window therefore gives the same bits as summing its rows afresh, in a backfill and
//! in a daily run alike.

/// Infinities and NaNs are counted apart from the finite partials.
#[derive(Debug, Clone, Default)]
pub struct ExactSum {
    partials: Vec<f64>,
    nan: u32,
    pos_inf: u32,
    neg_inf: u32,
}

impl ExactSum {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.partials.clear();
        self.nan = 0;
        self.pos_inf = 0;
        self.neg_inf = 0;
    }

    pub fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.add_finite(v);
        } else if v.is_nan() {
            self.nan += 1;
        } else if v > 0.0 {
            self.pos_inf += 1;
        } else {
            self.neg_inf += 1;
        }
    }

    /// Removes a value added before.
    pub fn remove(&mut self, v: f64) {
        if v.is_finite() {
            self.add_finite(-v);
        } else if v.is_nan() {
            self.nan -= 1;
        } else if v > 0.0 {
            self.pos_inf -= 1;
        } else {
            self.neg_inf -= 1;
        }
    }

    fn add_finite(&mut self, mut x: f64) {
        let mut i = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        self.partials.truncate(i);
        if x != 0.0 {
            self.partials.push(x);
        }
    }

    /// The correctly rounded sum of the values present (0.0 when there are none).
    pub fn value(&self) -> f64 {
        if self.nan > 0 || (self.pos_inf > 0 && self.neg_inf > 0) {
            return f64::NAN;
        }
        if self.pos_inf > 0 {
            return f64::INFINITY;
        }
        if self.neg_inf > 0 {
            return f64::NEG_INFINITY;
        }
        let p = &self.partials;
        let Some(mut n) = p.len().checked_sub(1) else {
            return 0.0;
        };
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        // Round half to even across the partials below the two summed last.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

/// The exact sum of `values`, correctly rounded.
pub fn sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut s = ExactSum::new();
    for v in values {
        s.add(v);
    }
    s.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_exactly() {
        assert_eq!(sum([0.1; 10]), 1.0);
        assert_eq!(sum([1e100, 1.0, -1e100]), 1.0);
        assert_eq!(sum([1e16, 1.0, 1e-16]), 10000000000000002.0);
        assert_eq!(sum([]), 0.0);
        assert_eq!(sum([0.1, 0.2]), 0.30000000000000004);
        // Round half to even: 2^53 + 1 is not representable, the partial below breaks the tie.
        assert_eq!(sum([9007199254740992.0, 1.0, 1e-10]), 9007199254740994.0);
        assert_eq!(sum([9007199254740992.0, 1.0, -1e-10]), 9007199254740992.0);
        assert!(sum([1.0, f64::NAN]).is_nan());
        assert!(sum([f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(sum([f64::INFINITY, 1.0]), f64::INFINITY);
    }

    #[test]
    fn removing_restores_the_sum_of_what_is_left() {
        let vals = [
            0.1,
            1e20,
            -3.5,
            7e-12,
            f64::INFINITY,
            2.0,
            -1e20,
            f64::NAN,
            0.3,
        ];
        let mut s = ExactSum::new();
        for v in vals {
            s.add(v);
        }
        for k in 0..vals.len() {
            assert_eq!(
                s.value().to_bits(),
                sum(vals[k..].iter().copied()).to_bits(),
                "after removing {k}"
            );
            s.remove(vals[k]);
        }
        assert_eq!(s.value(), 0.0);
    }
}
