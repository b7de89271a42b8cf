//! YRN names: `yrn:<provider>:<service>:<region>:<tenant>:<type>[:<path>]`, e.g.
//! `yrn:yahoo:::demo:role:mycluster/server`. Owns parsing and printing; invariants: the
//! provider is `yahoo`, the tenant and the service are lower-cased, a path has no empty
//! segment, and `Yrn::parse(y.to_string()) == y`.

use std::fmt;

use crate::error::{R3Result, bad};

/// What a YRN names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A role (hosts and policies).
    Role,
    /// A resource (data and keys).
    Resource,
    /// A policy.
    Policy,
}

impl Kind {
    /// The type field of the YRN.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Role => "role",
            Kind::Resource => "resource",
            Kind::Policy => "policy",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "role" => Some(Kind::Role),
            "resource" => Some(Kind::Resource),
            "policy" => Some(Kind::Policy),
            _ => None,
        }
    }
}

/// A parsed YRN of a role, resource or policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Yrn {
    /// Service name ("" when none).
    pub service: String,
    /// Tenant (lower case).
    pub tenant: String,
    /// What it names.
    pub kind: Kind,
    /// Hierarchical name, `/`-separated.
    pub path: String,
}

/// Check a hierarchical name: non-empty segments of printable characters without `:`.
pub fn check_path(path: &str) -> R3Result<()> {
    if path.is_empty() || path.len() > 512 {
        return Err(bad("a name must have 1 to 512 characters"));
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return Err(bad(format!("name {path:?} has an empty path segment")));
        }
        if seg
            .chars()
            .any(|c| c == ':' || c.is_control() || c.is_whitespace())
        {
            return Err(bad(format!(
                "name {path:?} may not contain ':', spaces or control characters"
            )));
        }
    }
    Ok(())
}

impl Yrn {
    /// A YRN of `kind` named `path` in `tenant`.
    pub fn new(tenant: &str, kind: Kind, path: &str) -> R3Result<Yrn> {
        check_path(path)?;
        Ok(Yrn {
            service: String::new(),
            tenant: tenant.to_ascii_lowercase(),
            kind,
            path: path.to_string(),
        })
    }

    /// Parse a full YRN.
    pub fn parse(s: &str) -> R3Result<Yrn> {
        let f: Vec<&str> = s.splitn(7, ':').collect();
        if f.len() < 7 || f[0] != "yrn" {
            return Err(bad(format!(
                "{s:?} is not a YRN (yrn:yahoo:<service>:<region>:<tenant>:<type>:<name>)"
            )));
        }
        if f[1] != "yahoo" {
            return Err(bad(format!("YRN {s:?}: the provider must be yahoo")));
        }
        let kind = Kind::parse(f[5]).ok_or_else(|| {
            bad(format!(
                "YRN {s:?}: type {:?} is not role, resource or policy",
                f[5]
            ))
        })?;
        if f[4].is_empty() {
            return Err(bad(format!("YRN {s:?} names no tenant")));
        }
        check_path(f[6])?;
        Ok(Yrn {
            service: f[2].to_ascii_lowercase(),
            tenant: f[4].to_ascii_lowercase(),
            kind,
            path: f[6].to_string(),
        })
    }

    /// A YRN or a bare name of `kind` in `tenant`.
    pub fn resolve(s: &str, tenant: &str, kind: Kind) -> R3Result<Yrn> {
        if s.starts_with("yrn:") {
            let y = Yrn::parse(s)?;
            if y.kind != kind {
                return Err(bad(format!("{s:?} is not a {} YRN", kind.as_str())));
            }
            Ok(y)
        } else {
            Yrn::new(tenant, kind, s.trim_matches('/'))
        }
    }

    /// The parent (`a/b` → `a`), if any.
    pub fn parent(&self) -> Option<Yrn> {
        let (p, _) = self.path.rsplit_once('/')?;
        Some(Yrn {
            path: p.to_string(),
            ..self.clone()
        })
    }

    /// The same path as another kind (a role's resource: `:role:` → `:resource:`).
    pub fn as_kind(&self, kind: Kind) -> Yrn {
        Yrn {
            kind,
            ..self.clone()
        }
    }

    /// The last path segment.
    pub fn leaf(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

impl fmt::Display for Yrn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "yrn:yahoo:{}::{}:{}:{}",
            self.service,
            self.tenant,
            self.kind.as_str(),
            self.path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let y = Yrn::parse("yrn:yahoo:::Demo:role:mycluster/server").unwrap();
        assert_eq!(y.tenant, "demo");
        assert_eq!(y.kind, Kind::Role);
        assert_eq!(y.to_string(), "yrn:yahoo:::demo:role:mycluster/server");
        assert_eq!(Yrn::parse(&y.to_string()).unwrap(), y);
        assert_eq!(y.parent().unwrap().path, "mycluster");
        assert_eq!(
            y.as_kind(Kind::Resource).to_string(),
            "yrn:yahoo:::demo:resource:mycluster/server"
        );
        for b in [
            "yrn:google:::t:role:r",
            "yrn:yahoo:::t:user:r",
            "yrn:yahoo::::role:r",
            "yrn:yahoo:::t:role:a//b",
            "role:r",
        ] {
            assert!(Yrn::parse(b).is_err(), "{b}");
        }
        let r = Yrn::resolve("c1/slave", "Demo", Kind::Role).unwrap();
        assert_eq!(r.to_string(), "yrn:yahoo:::demo:role:c1/slave");
        assert!(Yrn::resolve("yrn:yahoo:::demo:policy:p", "demo", Kind::Role).is_err());
    }
}
