//! Learning-rate schedules: how the step size `eta` changes with the update count `t`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A learning-rate schedule, validated at construction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Schedule {
    /// `eta(t) = eta`.
    Constant { eta: f64 },
    /// `eta(t) = t0 / (t + t1)`: the simulated-annealing schedule of the textbook, which decays
    /// like `1/t` (what stochastic gradient descent needs to converge) from `t0 / t1`.
    InverseTime { t0: f64, t1: f64 },
    /// scikit-learn's `invscaling`: `eta(t) = eta0 / (t + 1)^power_t`.
    Invscaling { eta0: f64, power_t: f64 },
}

impl Schedule {
    /// The step size for update number `t` (counting from 0).
    #[inline]
    pub fn eta(&self, t: u64) -> f64 {
        let t = t as f64;
        match *self {
            Schedule::Constant { eta } => eta,
            Schedule::InverseTime { t0, t1 } => t0 / (t + t1),
            Schedule::Invscaling { eta0, power_t } => eta0 / (t + 1.0).powf(power_t),
        }
    }

    /// Checks that every parameter is finite and positive (`power_t` may be zero).
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::param(name, "a positive number", v))
            }
        };
        match *self {
            Schedule::Constant { eta } => positive("--eta", eta),
            Schedule::InverseTime { t0, t1 } => positive("--t0", t0).and(positive("--t1", t1)),
            Schedule::Invscaling { eta0, power_t } => {
                positive("--eta", eta0)?;
                if power_t.is_finite() && power_t >= 0.0 {
                    Ok(())
                } else {
                    Err(Error::param("--power-t", "a number >= 0", power_t))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_formulas() {
        assert_eq!(Schedule::Constant { eta: 0.3 }.eta(1000), 0.3);
        let inv = Schedule::InverseTime { t0: 5.0, t1: 50.0 };
        assert_eq!(inv.eta(0), 0.1);
        assert_eq!(inv.eta(50), 0.05);
        let sk = Schedule::Invscaling { eta0: 0.01, power_t: 0.25 };
        assert_eq!(sk.eta(0), 0.01);
        assert!((sk.eta(15) - 0.005).abs() < 1e-15);
    }

    #[test]
    fn bad_parameters_are_rejected_by_name() {
        let e = Schedule::InverseTime { t0: 1.0, t1: -2.0 }.validate().unwrap_err();
        assert_eq!(e.to_string(), "invalid --t1: expected a positive number, found -2");
    }
}
