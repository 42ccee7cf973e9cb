//! The rollout arithmetic of Kubernetes' deployment controller, as pure functions over
//! replica counts so every rule can be checked against its documented examples: surge and
//! unavailability budgets, how far the new ReplicaSet may grow, how far the old ones may
//! shrink, and proportional scaling of a resized Deployment in mid-rollout.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Kubernetes' `GetScaledValueFromIntOrPercent`: an integer as is, `"N%"` of `total`
/// rounded up or down. Anything else is an error (the API server refuses it).
pub(crate) fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    format!("invalid value for IntOrString: {s:?} is not a percentage")
                })?;
            let scaled = pct * i64::from(total);
            let value = if round_up {
                scaled.div_euclid(100) + i64::from(scaled.rem_euclid(100) != 0)
            } else {
                scaled.div_euclid(100)
            };
            i32::try_from(value).map_err(|_| format!("{s:?} of {total} is out of range"))
        }
    }
}

/// Kubernetes' `ResolveFenceposts`: `(maxSurge, maxUnavailable)` for `desired` replicas;
/// surge rounds up, unavailability down, an unset value is 0, and when both come out 0
/// unavailability becomes 1 so a rollout can still move.
pub(crate) fn fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    Ok(if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    })
}

/// One ReplicaSet as the arithmetic sees it: its `spec.replicas` and
/// `status.availableReplicas`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Size {
    pub spec: i32,
    pub available: i32,
}

/// Kubernetes' `NewRSNewReplicas` for RollingUpdate: the new ReplicaSet grows by what the
/// surge budget leaves (`desired + max_surge` minus every ReplicaSet's `spec.replicas`,
/// `all_spec` including the new one), never past `desired`.
pub(crate) fn new_rs_replicas(desired: i32, max_surge: i32, all_spec: i32, new_spec: i32) -> i32 {
    let max_total = desired + max_surge;
    if all_spec >= max_total {
        return new_spec;
    }
    new_spec + (max_total - all_spec).min(desired - new_spec).max(0)
}

/// Kubernetes' `reconcileOldReplicaSets` arithmetic: the new `spec.replicas` of each old
/// ReplicaSet (`old` oldest first) so that at least `desired - max_unavailable` pods stay
/// available, counting the new ReplicaSet's unavailable pods against the budget. Old
/// ReplicaSets' unavailable pods go first (they cost no availability), then available ones,
/// oldest ReplicaSet first.
pub(crate) fn scale_down_old(
    desired: i32,
    max_unavailable: i32,
    old: &[Size],
    new: Size,
) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|s| s.spec).collect();
    let old_total: i32 = sizes.iter().sum();
    if old_total == 0 {
        return sizes;
    }
    let all_total = old_total + new.spec;
    let min_available = desired - max_unavailable;
    let new_unavailable = new.spec - new.available;
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return sizes;
    }
    // cleanupUnhealthyReplicas: unavailable pods of old ReplicaSets, within the budget.
    let mut cleaned = 0;
    for (size, rs) in sizes.iter_mut().zip(old) {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = *size - rs.available;
        if *size == 0 || unhealthy <= 0 {
            continue;
        }
        let n = unhealthy.min(max_scaled_down - cleaned);
        *size -= n;
        cleaned += n;
    }
    // scaleDownOldReplicaSetsForRollingUpdate: available pods above the minimum.
    let available: i32 = old.iter().map(|s| s.available).sum::<i32>() + new.available;
    if available <= min_available {
        return sizes;
    }
    let mut budget = available - min_available;
    for size in sizes.iter_mut() {
        if budget <= 0 {
            break;
        }
        let n = (*size).min(budget);
        *size -= n;
        budget -= n;
    }
    sizes
}

/// Kubernetes' proportional scaling (`scale` in sync.go) when a Deployment is resized while
/// several ReplicaSets have pods: each gets a share of the change in proportion to its size
/// against the `deployment.kubernetes.io/max-replicas` it was last scaled for (`annotated`,
/// or `fallback`: the Deployment's status.replicas), and what rounding leaves goes to the
/// first one. `sizes` must be in Kubernetes' order: largest first when growing, and on a
/// tie the newer first when growing, the older first when shrinking.
pub(crate) fn proportional(
    desired: i32,
    max_surge: i32,
    sizes: &[(i32, Option<i32>)],
    fallback: i32,
) -> Vec<i32> {
    let total: i32 = sizes.iter().map(|s| s.0).sum();
    let allowed = desired + max_surge;
    let to_add = allowed - total;
    let mut added = 0;
    let mut out: Vec<i32> = sizes
        .iter()
        .map(|&(spec, annotated)| {
            if to_add == 0 || spec == 0 || to_add == added {
                return spec;
            }
            let fraction = if desired == 0 {
                -spec
            } else {
                let max = annotated.unwrap_or(fallback).max(1);
                let scaled = f64::from(spec) * f64::from(allowed) / f64::from(max);
                // Go's integer.RoundToInt32: halves away from zero.
                scaled.round() as i32 - spec
            };
            let left = to_add - added;
            let share = if to_add > 0 {
                fraction.min(left)
            } else {
                fraction.max(left)
            };
            added += share;
            spec + share
        })
        .collect();
    if let Some(first) = out.first_mut()
        && to_add != 0
    {
        *first = (*first + to_add - added).max(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    fn i(v: i32) -> IntOrString {
        IntOrString::Int(v)
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailability_down() {
        // (maxSurge, maxUnavailable, replicas) -> (surge, unavailable)
        let cases = [
            // Kubernetes' documentation: 10 replicas, 25%/25%.
            (Some(s("25%")), Some(s("25%")), 10, (3, 2)),
            (Some(i(1)), Some(i(0)), 3, (1, 0)),
            (Some(i(0)), Some(i(1)), 3, (0, 1)),
            // Both zero after rounding: one pod may still be unavailable.
            (Some(s("25%")), Some(s("25%")), 0, (0, 1)),
            (Some(s("0%")), Some(s("0%")), 4, (0, 1)),
            (Some(s("25%")), Some(s("25%")), 1, (1, 0)),
            (Some(s("25%")), Some(s("25%")), 3, (1, 0)),
            (Some(s("25%")), Some(s("25%")), 4, (1, 1)),
            (Some(s("30%")), Some(s("30%")), 10, (3, 3)),
            (Some(s("33%")), Some(s("33%")), 10, (4, 3)),
            (Some(s("100%")), Some(s("100%")), 7, (7, 7)),
            (None, None, 5, (0, 1)),
            (Some(i(2)), None, 5, (2, 0)),
        ];
        for (surge, unavail, replicas, want) in cases {
            assert_eq!(
                fenceposts(surge.as_ref(), unavail.as_ref(), replicas),
                Ok(want),
                "{surge:?} {unavail:?} of {replicas}"
            );
        }
        assert!(fenceposts(Some(&s("x")), None, 3).is_err());
        assert!(fenceposts(Some(&s("5")), None, 3).is_err());
    }

    #[test]
    fn new_replica_set_grows_within_the_surge() {
        // (desired, maxSurge, sum of all spec.replicas, new spec) -> new spec
        let cases = [
            // 10 replicas, 3 surge: a fresh rollout starts 3 new pods.
            (10, 3, 10, 0, 3),
            // Already at 13 pods: wait for the old ones to shrink.
            (10, 3, 13, 3, 3),
            (10, 3, 11, 3, 5),
            // Never past the desired count.
            (10, 3, 10, 9, 10),
            (3, 1, 3, 0, 1),
            (3, 1, 4, 1, 1),
            (3, 0, 2, 1, 2),
            // Scaling from scratch: everything at once.
            (5, 2, 0, 0, 5),
        ];
        for (desired, surge, all, new, want) in cases {
            assert_eq!(
                new_rs_replicas(desired, surge, all, new),
                want,
                "{desired} {surge} {all} {new}"
            );
        }
    }

    fn sz(spec: i32, available: i32) -> Size {
        Size { spec, available }
    }

    #[test]
    fn old_replica_sets_shrink_only_as_far_as_availability_allows() {
        // (desired, maxUnavailable, old sizes oldest first, new) -> old spec.replicas
        type Case = (i32, i32, Vec<Size>, Size, Vec<i32>);
        let cases: [Case; 8] = [
            // 10 replicas, 2 unavailable, new RS just created with 3 unready pods: of 13
            // pods, 8 must stay available and 3 are not, so 2 old ones may go.
            (10, 2, vec![sz(10, 10)], sz(3, 0), vec![8]),
            // Nothing new is available and the budget is spent: old pods stay.
            (10, 2, vec![sz(8, 8)], sz(5, 0), vec![8]),
            // New pods became available: old ones make room for them.
            (10, 2, vec![sz(8, 8)], sz(5, 5), vec![3]),
            // maxUnavailable 0 (replicas 3, surge 1): one old pod per available new pod.
            (3, 0, vec![sz(3, 3)], sz(1, 0), vec![3]),
            (3, 0, vec![sz(3, 3)], sz(1, 1), vec![2]),
            // Unhealthy old pods go first and cost nothing; then available ones, oldest RS
            // first.
            (4, 1, vec![sz(2, 0), sz(2, 2)], sz(1, 1), vec![0, 2]),
            (4, 1, vec![sz(2, 2), sz(2, 2)], sz(2, 2), vec![0, 1]),
            // No old pods: nothing to do.
            (4, 1, vec![sz(0, 0)], sz(4, 0), vec![0]),
        ];
        for (desired, unavail, old, new, want) in cases {
            assert_eq!(
                scale_down_old(desired, unavail, &old, new),
                want,
                "{desired} {unavail} {old:?} {new:?}"
            );
        }
    }

    #[test]
    fn proportional_scaling_spreads_a_resize_over_active_replica_sets() {
        // Kubernetes' documentation: 10 replicas, surge 3, mid-rollout (8 old, 5 new), scaled
        // to 15: the 5 extra go 3 to the old ReplicaSet and 2 to the new one.
        assert_eq!(
            proportional(15, 3, &[(8, Some(13)), (5, Some(13))], 13),
            [11, 7]
        );
        // Scaled down to zero: every ReplicaSet goes to zero.
        assert_eq!(proportional(0, 0, &[(3, Some(4)), (1, Some(4))], 4), [0, 0]);
        // Rounding leftovers land on the first (largest) ReplicaSet.
        assert_eq!(
            proportional(4, 0, &[(1, Some(3)), (1, Some(3)), (1, Some(3))], 3),
            [2, 1, 1]
        );
        // Without the annotation, the Deployment's status.replicas is the reference.
        assert_eq!(proportional(6, 1, &[(3, None), (2, None)], 5), [4, 3]);
    }
}
