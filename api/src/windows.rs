//! The Windows Server build a workload targets, and the pod fields Windows forbids.

use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Windows Server LTSC release that Kubernetes supports as a node OS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowsBuild {
    /// Windows Server 2019, build 10.0.17763.
    Ws2019,
    /// Windows Server 2022, build 10.0.20348.
    Ws2022,
    /// Windows Server 2025, build 10.0.26100.
    Ws2025,
}

/// The accepted spellings, for error messages.
pub const ACCEPTED_BUILDS: &str = "2019, 2022, 2025, 10.0.17763, 10.0.20348 or 10.0.26100";

impl WindowsBuild {
    /// The value of the `node.kubernetes.io/windows-build` node label, e.g. `10.0.20348`.
    pub const fn node_label(self) -> &'static str {
        match self {
            Self::Ws2019 => "10.0.17763",
            Self::Ws2022 => "10.0.20348",
            Self::Ws2025 => "10.0.26100",
        }
    }

    /// The marketing name, e.g. `2022`.
    pub const fn release(self) -> &'static str {
        match self {
            Self::Ws2019 => "2019",
            Self::Ws2022 => "2022",
            Self::Ws2025 => "2025",
        }
    }

    /// Parses `2022` or `10.0.20348`; `None` for a build zdeploy does not know.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Ws2019, Self::Ws2022, Self::Ws2025]
            .into_iter()
            .find(|b| s == b.release() || s == b.node_label())
    }
}

impl fmt::Display for WindowsBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.release())
    }
}

impl Serialize for WindowsBuild {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.release())
    }
}

impl<'de> Deserialize<'de> for WindowsBuild {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown Windows build {s:?}: use {ACCEPTED_BUILDS}"
            ))
        })
    }
}

impl JsonSchema for WindowsBuild {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WindowsBuild".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": ["2019", "2022", "2025", "10.0.17763", "10.0.20348", "10.0.26100"],
        })
    }
}

/// A pod-template field that the API server rejects when `spec.os.name` is `windows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForbiddenField {
    /// Path below the pod spec, e.g. `securityContext.runAsUser`.
    pub path: String,
}

/// Lists every field set in `pod` that Windows pods may not use.
pub fn forbidden_fields(pod: &PodSpec) -> Vec<ForbiddenField> {
    let mut found = Vec::new();
    let mut hit = |set: bool, path: String| {
        if set {
            found.push(ForbiddenField { path });
        }
    };
    hit(pod.host_pid.is_some(), "hostPID".into());
    hit(pod.host_ipc.is_some(), "hostIPC".into());
    hit(pod.host_users.is_some(), "hostUsers".into());
    hit(
        pod.share_process_namespace.is_some(),
        "shareProcessNamespace".into(),
    );
    if let Some(sc) = &pod.security_context {
        let p = |f: &str| format!("securityContext.{f}");
        hit(sc.se_linux_options.is_some(), p("seLinuxOptions"));
        hit(sc.seccomp_profile.is_some(), p("seccompProfile"));
        hit(sc.app_armor_profile.is_some(), p("appArmorProfile"));
        hit(sc.fs_group.is_some(), p("fsGroup"));
        hit(
            sc.fs_group_change_policy.is_some(),
            p("fsGroupChangePolicy"),
        );
        hit(sc.sysctls.is_some(), p("sysctls"));
        hit(sc.run_as_user.is_some(), p("runAsUser"));
        hit(sc.run_as_group.is_some(), p("runAsGroup"));
        hit(sc.supplemental_groups.is_some(), p("supplementalGroups"));
        hit(
            sc.supplemental_groups_policy.is_some(),
            p("supplementalGroupsPolicy"),
        );
        hit(
            sc.se_linux_change_policy.is_some(),
            p("seLinuxChangePolicy"),
        );
    }
    let lists = [
        ("containers", Some(&pod.containers)),
        ("initContainers", pod.init_containers.as_ref()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let Some(sc) = &c.security_context else {
                continue;
            };
            let p = |f: &str| format!("{list}[{i}].securityContext.{f}");
            hit(sc.se_linux_options.is_some(), p("seLinuxOptions"));
            hit(sc.seccomp_profile.is_some(), p("seccompProfile"));
            hit(sc.app_armor_profile.is_some(), p("appArmorProfile"));
            hit(sc.capabilities.is_some(), p("capabilities"));
            hit(
                sc.read_only_root_filesystem.is_some(),
                p("readOnlyRootFilesystem"),
            );
            hit(sc.privileged.is_some(), p("privileged"));
            hit(
                sc.allow_privilege_escalation.is_some(),
                p("allowPrivilegeEscalation"),
            );
            hit(sc.proc_mount.is_some(), p("procMount"));
            hit(sc.run_as_user.is_some(), p("runAsUser"));
            hit(sc.run_as_group.is_some(), p("runAsGroup"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_parse_by_release_and_by_number() {
        assert_eq!(WindowsBuild::parse("2022"), Some(WindowsBuild::Ws2022));
        assert_eq!(
            WindowsBuild::parse("10.0.17763"),
            Some(WindowsBuild::Ws2019)
        );
        assert_eq!(WindowsBuild::parse("2016"), None);
        assert_eq!(WindowsBuild::parse("10.0.99999"), None);
        assert_eq!(WindowsBuild::Ws2025.node_label(), "10.0.26100");
    }
}
