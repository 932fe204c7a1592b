//! Every pod-template field the API server rejects on Windows pods is named by validation.

use zdeploy_api::validate::validate_str;

const BASE: &str = "apiVersion: zdeploy.io/v1alpha1
kind: ZmqService
metadata: {name: echo}
spec:
  windows: {build: \"2022\"}
  zmq: {port: 5555}
  template:
    spec:
POD
      containers:
        - name: echo
          image: echo:1
CONTAINER
";

fn problems(pod: &str, container: &str) -> Vec<String> {
    let text = BASE.replace("POD\n", pod).replace("CONTAINER\n", container);
    validate_str(&text)
        .unwrap()
        .into_iter()
        .flat_map(|d| d.problems)
        .map(|p| p.path.to_string())
        .collect()
}

#[test]
fn each_forbidden_pod_field_is_named() {
    let pod_fields = [
        ("      hostPID: true\n", "hostPID"),
        ("      hostIPC: true\n", "hostIPC"),
        ("      hostUsers: false\n", "hostUsers"),
        (
            "      shareProcessNamespace: true\n",
            "shareProcessNamespace",
        ),
        (
            "      securityContext: {seLinuxOptions: {level: s0}}\n",
            "securityContext.seLinuxOptions",
        ),
        (
            "      securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
            "securityContext.seccompProfile",
        ),
        (
            "      securityContext: {appArmorProfile: {type: RuntimeDefault}}\n",
            "securityContext.appArmorProfile",
        ),
        (
            "      securityContext: {fsGroup: 2000}\n",
            "securityContext.fsGroup",
        ),
        (
            "      securityContext: {fsGroupChangePolicy: Always}\n",
            "securityContext.fsGroupChangePolicy",
        ),
        (
            "      securityContext: {sysctls: [{name: a, value: b}]}\n",
            "securityContext.sysctls",
        ),
        (
            "      securityContext: {runAsUser: 1000}\n",
            "securityContext.runAsUser",
        ),
        (
            "      securityContext: {runAsGroup: 1000}\n",
            "securityContext.runAsGroup",
        ),
        (
            "      securityContext: {supplementalGroups: [1]}\n",
            "securityContext.supplementalGroups",
        ),
        (
            "      securityContext: {supplementalGroupsPolicy: Strict}\n",
            "securityContext.supplementalGroupsPolicy",
        ),
        (
            "      securityContext: {seLinuxChangePolicy: Recursive}\n",
            "securityContext.seLinuxChangePolicy",
        ),
    ];
    for (yaml, field) in pod_fields {
        let found = problems(yaml, "");
        assert_eq!(found, [format!("spec.template.spec.{field}")], "{field}");
    }
}

#[test]
fn each_forbidden_container_field_is_named() {
    let container_fields = [
        ("seLinuxOptions: {level: s0}", "seLinuxOptions"),
        ("seccompProfile: {type: RuntimeDefault}", "seccompProfile"),
        ("appArmorProfile: {type: RuntimeDefault}", "appArmorProfile"),
        ("capabilities: {drop: [ALL]}", "capabilities"),
        ("readOnlyRootFilesystem: true", "readOnlyRootFilesystem"),
        ("privileged: false", "privileged"),
        (
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation",
        ),
        ("procMount: Default", "procMount"),
        ("runAsUser: 1000", "runAsUser"),
        ("runAsGroup: 1000", "runAsGroup"),
    ];
    for (yaml, field) in container_fields {
        let found = problems("", &format!("          securityContext: {{{yaml}}}\n"));
        assert_eq!(
            found,
            [format!(
                "spec.template.spec.containers[0].securityContext.{field}"
            )],
            "{field}"
        );
    }
}

#[test]
fn windows_options_are_fine() {
    assert!(
        problems(
            "      securityContext: {windowsOptions: {runAsUserName: ContainerUser}}\n",
            ""
        )
        .is_empty()
    );
}
