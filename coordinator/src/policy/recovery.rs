//! Recovery targets and drill checks: which RTO and RPO a database is held to, and which SQL
//! checks a restore drill of it must pass.
//!
//! A tier names a pair of targets. Tiers with a selector compete for the databases they
//! select and the strictest wins, so labelling a database into a stricter tier can only
//! tighten its targets; a database no tier selects falls to the policy's default tier. The
//! built-in tiers come from the runbook (full recovery within 30 minutes, partial within 15)
//! and are in force until a policy document defines its own.

use std::sync::LazyLock;
use std::time::Duration;

use warden_shared::{DrillCheck, Labels, Selector};

/// An RTO/RPO target pair and, optionally, the databases it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    /// Longest acceptable time to a usable restored copy.
    pub rto: Duration,
    /// Longest acceptable age of the newest complete backup (the data a loss may cost).
    pub rpo: Duration,
    /// The databases this tier claims. `None`: the tier only applies as the policy's default
    /// tier, to databases no tier selects.
    pub selector: Option<Selector>,
}

/// The name of the default tier when a document does not say.
pub const DEFAULT_TIER: &str = "standard";

/// The tiers in force when a policy document defines none.
pub fn builtin_tiers() -> &'static [Tier] {
    static TIERS: LazyLock<Vec<Tier>> = LazyLock::new(|| {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        vec![
            Tier {
                name: DEFAULT_TIER.to_owned(),
                rto: minutes(30),
                rpo: hours(24),
                selector: None,
            },
            Tier {
                name: "critical".to_owned(),
                rto: minutes(15),
                rpo: hours(1),
                selector: Some(
                    "tier=critical"
                        .parse()
                        .expect("a built-in selector is valid"),
                ),
            },
        ]
    });
    &TIERS
}

/// Picks the tier of a database with `labels`: the strictest tier whose selector matches
/// (smallest RTO, then smallest RPO, then name), else the tier named `default_tier`. When
/// `default_tier` names none of `tiers` (only possible for a policy built in code, since
/// parsing refuses it), the built-in default tier stands in.
pub fn select_tier<'a>(tiers: &'a [Tier], default_tier: &str, labels: &Labels) -> &'a Tier {
    tiers
        .iter()
        .filter(|tier| tier.selector.as_ref().is_some_and(|s| s.matches(labels)))
        .min_by(|a, b| (a.rto, a.rpo, &a.name).cmp(&(b.rto, b.rpo, &b.name)))
        .or_else(|| tiers.iter().find(|tier| tier.name == default_tier))
        .unwrap_or(&builtin_tiers()[0])
}

/// A SQL check that drills of the selected databases run in the restored copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRule {
    pub name: String,
    pub selector: Selector,
    /// One query returning one boolean; `true` passes.
    pub sql: String,
}

impl CheckRule {
    /// The check as a drill order carries it.
    pub fn to_drill_check(&self) -> DrillCheck {
        DrillCheck {
            name: self.name.clone(),
            sql: self.sql.clone(),
        }
    }
}

/// Normalizes the SQL of a check: surrounding white space and trailing semicolons go, so the
/// agent can run it as one statement. Returns why it is not one query, if it is not: empty,
/// or with a `;` between statements. Semicolons inside quoted strings, quoted identifiers,
/// dollar-quoted bodies and comments do not count.
pub fn normalize_check_sql(text: &str) -> Result<String, &'static str> {
    let mut sql = text.trim();
    while let Some(rest) = sql.strip_suffix(';') {
        sql = rest.trim_end();
    }
    if sql.is_empty() {
        return Err("the query is empty; write one query that returns one boolean");
    }
    if warden_shared::migration::split_statements(sql).len() > 1 {
        return Err(
            "more than one statement; a check is one query that returns one boolean, e.g. select count(*) > 0 from orders",
        );
    }
    Ok(sql.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_shared::labels::labels;

    fn tier(name: &str, rto_minutes: u64, rpo_minutes: u64, selector: Option<&str>) -> Tier {
        Tier {
            name: name.to_owned(),
            rto: Duration::from_secs(rto_minutes * 60),
            rpo: Duration::from_secs(rpo_minutes * 60),
            selector: selector.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn builtin_tiers_follow_the_runbook() {
        let tiers = builtin_tiers();
        assert_eq!(
            tiers,
            [
                tier("standard", 30, 24 * 60, None),
                tier("critical", 15, 60, Some("tier=critical")),
            ]
        );
        assert_eq!(
            select_tier(tiers, DEFAULT_TIER, &labels(&[])).name,
            "standard"
        );
        assert_eq!(
            select_tier(tiers, DEFAULT_TIER, &labels(&[("tier", "critical")])).name,
            "critical"
        );
        assert_eq!(
            select_tier(tiers, DEFAULT_TIER, &labels(&[("tier", "gold")])).name,
            "standard"
        );
    }

    #[test]
    fn the_strictest_matching_tier_wins() {
        let tiers = [
            tier("lax", 60, 60, Some("env=prod")),
            tier("tight-rpo", 30, 5, Some("team=payments")),
            tier("tight-rto", 10, 120, Some("env=prod,team=payments")),
            tier("b-tie", 30, 5, Some("region=eu")),
            tier("a-tie", 30, 5, Some("region=eu")),
            tier("fallback", 120, 1440, None),
        ];
        let pick =
            |pairs: &[(&str, &str)]| select_tier(&tiers, "fallback", &labels(pairs)).name.clone();
        assert_eq!(pick(&[("env", "prod")]), "lax");
        // Smallest RTO first, whatever the RPO.
        assert_eq!(pick(&[("env", "prod"), ("team", "payments")]), "tight-rto");
        // Equal RTO: smallest RPO.
        assert_eq!(pick(&[("team", "payments"), ("env", "dev")]), "tight-rpo");
        // Equal RTO and RPO: the name decides, not the document order.
        assert_eq!(pick(&[("region", "eu")]), "a-tie");
        assert_eq!(pick(&[("team", "payments"), ("region", "eu")]), "a-tie");
        // No selector matches: the default tier.
        assert_eq!(pick(&[("env", "dev")]), "fallback");
        assert_eq!(pick(&[]), "fallback");
    }

    #[test]
    fn a_tier_without_selector_applies_only_as_the_default() {
        let tiers = [
            tier("strict-but-unselected", 1, 1, None),
            tier("default", 30, 60, None),
            tier("prod", 20, 60, Some("env=prod")),
        ];
        assert_eq!(select_tier(&tiers, "default", &labels(&[])).name, "default");
        assert_eq!(
            select_tier(&tiers, "default", &labels(&[("env", "prod")])).name,
            "prod"
        );
        // An empty selector is not "no selector": it selects the whole fleet.
        let tiers = [tier("default", 30, 60, None), tier("all", 40, 60, Some(""))];
        assert_eq!(select_tier(&tiers, "default", &labels(&[])).name, "all");
    }

    #[test]
    fn an_unknown_default_tier_falls_back_to_the_builtin_one() {
        let tiers = [tier("prod", 20, 60, Some("env=prod"))];
        let chosen = select_tier(&tiers, "missing", &labels(&[]));
        assert_eq!(chosen, &builtin_tiers()[0]);
    }

    #[test]
    fn check_sql_is_one_query() {
        for (text, expected) in [
            ("select true", "select true"),
            (
                "  select count(*) > 0 from orders ;\n ",
                "select count(*) > 0 from orders",
            ),
            ("select true;;", "select true"),
            ("select 'a;b' = 'a;b'", "select 'a;b' = 'a;b'"),
            ("select 'it''s;' <> ''", "select 'it''s;' <> ''"),
            (
                "select count(*) > 0 from \"odd;table\"",
                "select count(*) > 0 from \"odd;table\"",
            ),
            (
                "select true -- trailing; comment",
                "select true -- trailing; comment",
            ),
            (
                "select /* a; /* nested; */ still; */ true",
                "select /* a; /* nested; */ still; */ true",
            ),
            ("select $$a;b$$ = $$a;b$$", "select $$a;b$$ = $$a;b$$"),
            (
                "select $q$ $$;$$ $q$ is not null",
                "select $q$ $$;$$ $q$ is not null",
            ),
            ("select price$ > 0 from t", "select price$ > 0 from t"),
            ("select E'a\\';b' <> ''", "select E'a\\';b' <> ''"),
        ] {
            assert_eq!(
                normalize_check_sql(text).as_deref(),
                Ok(expected),
                "{text:?}"
            );
        }
        for (text, problem) in [
            ("", "empty"),
            ("  ;  ", "empty"),
            ("select 1; select 2", "more than one statement"),
            ("select 'x'; drop table t", "more than one statement"),
            (
                "select true -- c\n; delete from t",
                "more than one statement",
            ),
            ("select $$x$$; select 1", "more than one statement"),
        ] {
            let error = normalize_check_sql(text).unwrap_err();
            assert!(error.contains(problem), "{text:?}: {error}");
        }
    }

    #[test]
    fn check_rules_become_drill_checks() {
        let rule = CheckRule {
            name: "orders".to_owned(),
            selector: Selector::everything(),
            sql: "select count(*) > 0 from orders".to_owned(),
        };
        assert_eq!(
            rule.to_drill_check(),
            DrillCheck {
                name: "orders".to_owned(),
                sql: "select count(*) > 0 from orders".to_owned(),
            }
        );
    }
}
