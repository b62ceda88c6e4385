//! The pool budget: every replica's connections together must fit in PostgreSQL's
//! `max_connections`, less the ones it keeps for superusers. N replicas each hold up to
//! `POSTGRES_POOL_MAX` + [`OWN_CONNECTIONS`]; past the budget, the replica that opens
//! one connection too many gets "too many clients" on a query, under load, which is the
//! worst moment to find out. A replica cannot know how many others will run, so it
//! checks the deployment's ceiling (`REPLICAS_MAX`, the HPA's maximum) and the replicas
//! it sees connected now, and warns at start (docs/deployment.md, "Scaling").

use std::fmt;

use sqlx::PgPool;

/// Connections a replica holds besides its request pool: one for the health check and
/// one for the denylist poll (`Database::connect_lazy`).
pub const OWN_CONNECTIONS: u32 = 2;

/// What the server allows, and how many replicas it has connected now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_connections: u32,
    /// `superuser_reserved_connections`: never available to the service's role.
    pub reserved: u32,
    /// Distinct client addresses connected as `cartae-database-api`, this replica
    /// included: a lower bound (replicas behind one address count once).
    pub replicas_seen: u32,
}

/// One replica's view of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub replicas: u32,
    pub pool_max: u32,
    pub available: u32,
}

impl Budget {
    /// The budget for the larger of `replicas_max` and the replicas seen.
    pub fn of(pool_max: u32, replicas_max: Option<u32>, limits: ServerLimits) -> Self {
        Self {
            replicas: replicas_max.unwrap_or(0).max(limits.replicas_seen).max(1),
            pool_max,
            available: limits.max_connections.saturating_sub(limits.reserved),
        }
    }

    pub fn needed(&self) -> u32 {
        self.replicas
            .saturating_mul(self.pool_max.saturating_add(OWN_CONNECTIONS))
    }

    pub fn fits(&self) -> bool {
        self.needed() <= self.available
    }

    /// The largest `POSTGRES_POOL_MAX` that fits, 0 when even the own connections do not.
    pub fn pool_max_that_fits(&self) -> u32 {
        (self.available / self.replicas).saturating_sub(OWN_CONNECTIONS)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} replica(s) x (POSTGRES_POOL_MAX {} + {OWN_CONNECTIONS}) = {} connections, \
             for {} available (max_connections less superuser_reserved_connections)",
            self.replicas,
            self.pool_max,
            self.needed(),
            self.available
        )
    }
}

/// Reads the server's limits and the replicas connected to it.
pub async fn server_limits(pool: &PgPool) -> Result<ServerLimits, sqlx::Error> {
    let (max_connections, reserved, replicas_seen): (i32, i32, i64) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int4, \
                current_setting('superuser_reserved_connections')::int4, \
                (SELECT count(DISTINCT coalesce(host(client_addr), 'local')) \
                   FROM pg_stat_activity WHERE application_name = 'cartae-database-api')",
    )
    .fetch_one(pool)
    .await?;
    let count = |n: i64| u32::try_from(n).unwrap_or(0);
    Ok(ServerLimits {
        max_connections: count(max_connections.into()),
        reserved: count(reserved.into()),
        replicas_seen: count(replicas_seen),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(replicas_seen: u32) -> ServerLimits {
        ServerLimits {
            max_connections: 100,
            reserved: 3,
            replicas_seen,
        }
    }

    #[test]
    fn the_shipped_defaults_fit_at_the_hpa_maximum() {
        let budget = Budget::of(7, Some(10), limits(3));
        assert_eq!(budget.needed(), 90);
        assert!(budget.fits(), "{budget}");
    }

    #[test]
    fn ten_replicas_of_ten_do_not_fit_in_a_hundred() {
        let budget = Budget::of(10, Some(10), limits(1));
        assert_eq!(budget.needed(), 120);
        assert!(!budget.fits());
        assert_eq!(budget.pool_max_that_fits(), 7);
    }

    #[test]
    fn more_replicas_seen_than_declared_count() {
        let budget = Budget::of(10, Some(3), limits(9));
        assert_eq!(budget.replicas, 9);
        assert!(!budget.fits());
    }

    #[test]
    fn without_a_ceiling_the_replicas_seen_decide() {
        assert_eq!(Budget::of(10, None, limits(0)).replicas, 1);
        assert!(Budget::of(10, None, limits(8)).fits());
        assert!(!Budget::of(10, None, limits(9)).fits());
    }
}
