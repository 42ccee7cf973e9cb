//! What a plugin may watch, read and write: its registration resolved against the served
//! kinds, and the grant the Plugin object gives it.

use kedge_core::resources::{self, Resource};
use kedge_core::selector::Selector as LabelSelector;
use serde_json::Value;

use crate::wit_host::{KindRef, Registration, Watch, WatchMap};

/// The kinds "every kind" (`*` in a registration or grant) stands for: every served kind but
/// Events (the busiest kind, never anyone's dependent in practice) and Plugins (which no plugin
/// may touch).
pub(crate) fn every_kind() -> impl Iterator<Item = &'static Resource> {
    resources::all().into_iter().filter(|r| {
        !(r.group.is_empty() && r.kind == "Event"
            || r.kind == "Plugin" && r.group == "plugins.kedge.io")
    })
}

pub use kedge_api::plugin_kind::is_wildcard;

/// A set of kinds: some, or every kind ([`every_kind`]).
#[derive(Debug, Default, Clone)]
pub struct KindSet {
    pub every: bool,
    pub kinds: Vec<&'static Resource>,
}

impl KindSet {
    pub fn contains(&self, res: &Resource) -> bool {
        (self.every && every_kind().any(|r| std::ptr::eq(r, res)))
            || self.kinds.iter().any(|r| std::ptr::eq(*r, res))
    }

    /// The kinds in the set.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &'static Resource> + Send + '_> {
        if self.every {
            // Every kind, and what was named besides it (Events).
            let extra = self
                .kinds
                .iter()
                .copied()
                .filter(|r| !every_kind().any(|e| std::ptr::eq(e, *r)));
            Box::new(every_kind().chain(extra))
        } else {
            Box::new(self.kinds.iter().copied())
        }
    }

    pub(crate) fn add(&mut self, res: &'static Resource) {
        if !self.kinds.iter().any(|r| std::ptr::eq(*r, res)) {
            self.kinds.push(res);
        }
    }
}

/// What a loaded plugin may touch, resolved from its registration.
#[derive(Debug)]
pub struct Permissions {
    /// The primary kind; `None` when the plugin reconciles objects of every kind (its
    /// registration's `for-kind` is `*`/`*`).
    pub for_kind: Option<&'static Resource>,
    pub owns: Vec<&'static Resource>,
    /// Kinds whose events enqueue primary objects found by name or label selector (the
    /// `watching-controller` world's `watches`).
    pub watches: Vec<WatchRule>,
    pub readable: KindSet,
    pub writable: KindSet,
    /// Resource metrics kinds it reads (`metrics.k8s.io/v1beta1 PodMetrics`, NodeMetrics):
    /// not stored, so no informer; reads go to the server's latest samples.
    pub metrics: Vec<&'static Resource>,
}

/// A validated [`Watch`]: events of `kind` enqueue the primary objects `by` finds.
#[derive(Debug, Clone)]
pub struct WatchRule {
    pub kind: &'static Resource,
    pub by: WatchBy,
}

/// How a [`WatchRule`] finds primary objects; paths are JSON pointers.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchBy {
    SameName,
    SelectorMap(String),
    LabelSelector(String),
}

impl WatchBy {
    /// The selector a primary object carries for this rule; `None` selects nothing.
    pub(crate) fn selector_of(&self, primary: &Value) -> Option<LabelSelector> {
        match self {
            WatchBy::SameName => None,
            WatchBy::SelectorMap(path) => {
                let map = primary.pointer(path)?.as_object()?;
                if map.is_empty() {
                    return None;
                }
                Some(kedge_core::selector::from_labels(map))
            }
            WatchBy::LabelSelector(path) => {
                let selector = primary.pointer(path).filter(|v| v.is_object())?;
                LabelSelector::from_structured(selector).ok()
            }
        }
    }
}

/// A dotted field path (`spec.selector`) as a JSON pointer (`/spec/selector`).
pub(crate) fn field_pointer(path: &str) -> std::result::Result<String, String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!("watch path {path:?} is not a dotted field path"));
    }
    Ok(path
        .split('.')
        .map(|seg| format!("/{}", seg.replace('~', "~0").replace('/', "~1")))
        .collect())
}

pub(crate) fn resolve_watch(
    w: &Watch,
    primary: Option<&'static Resource>,
) -> std::result::Result<WatchRule, String> {
    let Some(primary) = primary else {
        return Err(
            "a plugin reconciling every kind (`*`) has no watches: every event \
                    already enqueues its own object"
                .into(),
        );
    };
    let kind = resolve_kind(&w.kind)?;
    if !primary.namespaced || !kind.namespaced {
        return Err(format!(
            "watch of {}/{}: watches map within a namespace, so both kinds must be namespaced",
            w.kind.api_version, w.kind.kind
        ));
    }
    let by = match &w.by {
        WatchMap::SameName => WatchBy::SameName,
        WatchMap::SelectorMap(p) => WatchBy::SelectorMap(field_pointer(p)?),
        WatchMap::LabelSelector(p) => WatchBy::LabelSelector(field_pointer(p)?),
    };
    Ok(WatchRule { kind, by })
}

pub(crate) fn resolve_kind(k: &KindRef) -> std::result::Result<&'static Resource, String> {
    resources::by_kind(&k.api_version, &k.kind)
        .filter(|r| r.kind != "Plugin")
        .ok_or_else(|| format!("kind {}/{} is not served", k.api_version, k.kind))
}

pub(crate) fn resolve_set(refs: &[KindRef]) -> std::result::Result<KindSet, String> {
    let mut set = KindSet::default();
    for k in refs {
        if is_wildcard(&k.api_version, &k.kind) {
            set.every = true;
        } else {
            set.add(resolve_kind(k)?);
        }
    }
    Ok(set)
}

impl Permissions {
    pub(crate) fn from_registration(
        r: &Registration,
        watches: &[Watch],
    ) -> std::result::Result<Self, String> {
        let for_kind = if is_wildcard(&r.for_kind.api_version, &r.for_kind.kind) {
            None
        } else {
            Some(resolve_kind(&r.for_kind)?)
        };
        let owns = r
            .owns
            .iter()
            .map(resolve_kind)
            .collect::<Result<Vec<_>, _>>()?;
        if for_kind.is_none() && !owns.is_empty() {
            return Err(
                "a plugin reconciling every kind (`*`) owns nothing: every event \
                        already enqueues its own object"
                    .into(),
            );
        }
        let watches = watches
            .iter()
            .map(|w| resolve_watch(w, for_kind))
            .collect::<Result<Vec<_>, _>>()?;
        // Metrics kinds are read-only and have no informer: kept apart from the stored kinds.
        let (metrics, reads): (Vec<&KindRef>, Vec<&KindRef>) = r
            .reads
            .iter()
            .partition(|k| kedge_api::resource_metrics::by_kind(&k.api_version, &k.kind).is_some());
        let metrics: Vec<&'static Resource> = metrics
            .iter()
            .filter_map(|k| kedge_api::resource_metrics::by_kind(&k.api_version, &k.kind))
            .collect();
        let reads: Vec<KindRef> = reads.into_iter().cloned().collect();
        let mut readable = resolve_set(&reads)?;
        let writable = resolve_set(&r.writes)?;
        readable.every |= for_kind.is_none() || writable.every;
        let watched = watches.iter().map(|w| w.kind);
        for k in for_kind
            .into_iter()
            .chain(owns.iter().copied())
            .chain(watched)
        {
            readable.add(k);
        }
        for k in &writable.kinds {
            readable.add(k);
        }
        Ok(Permissions {
            for_kind,
            owns,
            watches,
            readable,
            writable,
            metrics,
        })
    }

    /// The kinds whose events reach the plugin as keys of their own: the primary kind, or
    /// every kind.
    pub(crate) fn primaries(&self) -> Box<dyn Iterator<Item = &'static Resource> + Send + '_> {
        match self.for_kind {
            Some(r) => Box::new(std::iter::once(r)),
            None => Box::new(every_kind()),
        }
    }
}

/// What the Plugin object grants (its `spec.watches` and `spec.writes`). A running version is
/// held to the intersection of its registration and the current grant, so narrowing the grant
/// takes effect on the next host call, before any version fitting it is applied.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub reads: KindSet,
    pub writes: KindSet,
}
