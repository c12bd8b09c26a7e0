//! The closed-form least-squares solution: the normal equations `(XᵀX + n·l2·I′) θ = Xᵀy`,
//! solved by Cholesky factorisation in `f64` (`I′` is the identity without the bias entry, so
//! the bias is not penalised).

use crate::error::{Error, Result};
use crate::reduce::NormalSums;

/// Relative size below which a Cholesky pivot counts as zero. Pivots are compared with the
/// diagonal entry they came from, so the test does not depend on the columns' units.
const PIVOT_TOLERANCE: f64 = 1e-10;

/// Solves for `θ = [w, b]`.
pub fn solve_normal(sums: &NormalSums, l2: f64) -> Result<Vec<f64>> {
    let n = sums.d + 1;
    let rows = sums.rows as f64;
    // Fill the full symmetric matrix from the upper triangle, and add the ridge term.
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            a[i * n + j] = sums.a[i * n + j];
            a[j * n + i] = sums.a[i * n + j];
        }
        if i < sums.d {
            a[i * n + i] += rows * l2;
        }
    }
    let l = cholesky(&mut a, n)?;
    // Forward then back substitution: L z = c, Lᵀ θ = z.
    let mut z = sums.c.clone();
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * z[k]).sum();
        z[i] = (z[i] - s) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * z[k]).sum();
        z[i] = (z[i] - s) / l[i * n + i];
    }
    Ok(z)
}

/// Factorises `a = L Lᵀ` in place (the lower triangle becomes `L`).
fn cholesky(a: &mut [f64], n: usize) -> Result<&[f64]> {
    for j in 0..n {
        let diag = a[j * n + j];
        let s: f64 = (0..j).map(|k| a[j * n + k] * a[j * n + k]).sum();
        let pivot = diag - s;
        let vanished = pivot.is_nan() || pivot <= PIVOT_TOLERANCE * diag.abs();
        if vanished || !pivot.is_finite() {
            return Err(Error::Singular { pivot: j + 1, order: n });
        }
        let ljj = pivot.sqrt();
        a[j * n + j] = ljj;
        for i in j + 1..n {
            let s: f64 = (0..j).map(|k| a[i * n + k] * a[j * n + k]).sum();
            a[i * n + j] = (a[i * n + j] - s) / ljj;
        }
    }
    Ok(a)
}

impl NormalSums {
    /// The mean squared error of `θ` on the summed rows: `(yᵀy − 2θᵀc + θᵀAθ) / n`.
    pub fn mse(&self, theta: &[f64]) -> f64 {
        let n = self.d + 1;
        let mut quad = 0.0;
        for i in 0..n {
            quad += theta[i] * theta[i] * self.a[i * n + i];
            for j in i + 1..n {
                quad += 2.0 * theta[i] * theta[j] * self.a[i * n + j];
            }
        }
        let lin: f64 = theta.iter().zip(&self.c).map(|(t, c)| t * c).sum();
        ((self.yy - 2.0 * lin + quad) / self.rows.max(1) as f64).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_an_exact_system() {
        // y = 2·x0 − 3·x1 + 0.5 on four points.
        let x = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, -1.0];
        let y: Vec<f32> = x.chunks(2).map(|r| 2.0 * r[0] - 3.0 * r[1] + 0.5).collect();
        let mut sums = NormalSums::new(2);
        sums.add_rows(None, &x, &y);
        let theta = solve_normal(&sums, 0.0).unwrap();
        for (got, want) in theta.iter().zip([2.0, -3.0, 0.5]) {
            assert!((got - want).abs() < 1e-9, "{theta:?}");
        }
        assert!(sums.mse(&theta) < 1e-12);
    }

    #[test]
    fn a_constant_column_is_singular_and_ridge_fixes_it() {
        let x = [3.0f32, 1.0, 3.0, 2.0, 3.0, 4.0];
        let y = [1.0f32, 2.0, 3.0];
        let mut sums = NormalSums::new(2);
        sums.add_rows(None, &x, &y);
        let err = solve_normal(&sums, 0.0).unwrap_err();
        assert!(matches!(err, Error::Singular { .. }), "{err}");
        assert!(solve_normal(&sums, 0.1).is_ok());
    }
}
