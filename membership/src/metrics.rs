//! `shoal_membership_members{group}` and `shoal_membership_healthy{group}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: &'static str,
}

/// Registered once per component; every group of the component reports under its own label.
#[derive(Clone, Debug, Default)]
pub struct MembershipMetrics {
    members: Family<GroupLabels, Gauge>,
    healthy: Family<GroupLabels, Gauge>,
}

impl MembershipMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = MembershipMetrics::default();
        registry.register(
            "membership_members",
            "Members of the group (configured or resolved)",
            metrics.members.clone(),
        );
        registry.register(
            "membership_healthy",
            "Members of the group whose health checks pass",
            metrics.healthy.clone(),
        );
        metrics
    }

    pub(crate) fn set(&self, group: &'static str, members: usize, healthy: usize) {
        let labels = GroupLabels { group };
        self.members
            .get_or_create(&labels)
            .set(i64::try_from(members).unwrap_or(i64::MAX));
        self.healthy
            .get_or_create(&labels)
            .set(i64::try_from(healthy).unwrap_or(i64::MAX));
    }
}
