//! Revisions in a cluster. What releasing an image with the manifest's pod template means
//! now: the template and the content of every ConfigMap and Secret it reads, digested
//! into the revision's name. Each revision gets copies of that configuration, made when
//! it is first released and never changed (`immutable`), and a record of its pod template
//! pointing at the copies (ConfigMap `NAME-rev-DIGEST`), so stable keeps reading its own
//! configuration while a canary reads the new one, also when a stable pod restarts. All
//! are owned by the ZmqService (garbage-collected with it); records and copies of
//! revisions no longer stable, canary or last released are deleted when a rollout ends.
//! A Secret's copy is a Secret; values are never logged.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use zdeploy_api::ZmqService;
use zdeploy_api::revision::{
    ConfigContent, ConfigKind, ConfigRef, Revision, changes, copy_name, digest, point_to_copies,
    references,
};

use super::errors::Error;
use super::service::FIELD_MANAGER;

/// The label naming the ZmqService a record or copy belongs to.
pub const SERVICE_LABEL: &str = "zdeploy.io/service";
/// The label naming the digest of the revision a record or copy belongs to.
pub const REVISION_LABEL: &str = "zdeploy.io/revision";
/// The key of a record holding the pod template.
const TEMPLATE_KEY: &str = "template.json";

/// One revision as it would be released now.
#[derive(Clone, Debug)]
pub struct Release {
    /// Its name, `IMAGE+DIGEST`.
    pub revision: String,
    /// Its pod template, pointing at its configuration's copies.
    pub template: PodTemplateSpec,
    /// The configuration it reads, by source.
    pub configs: BTreeMap<ConfigRef, ConfigContent>,
    /// The pod template as the manifest says (pointing at the sources).
    pub manifest_template: PodTemplateSpec,
    /// The type of each Secret read (`kubernetes.io/tls`...), kept by its copy.
    secret_types: BTreeMap<String, String>,
}

/// The record of a revision: `NAME-rev-DIGEST`.
pub fn record_name(service: &str, digest: &str) -> String {
    format!("{service}-rev-{digest}")
}

/// The manifest's pod template with `image` in the ZeroMQ container.
pub fn template_with_image(svc: &ZmqService, image: &str) -> PodTemplateSpec {
    let mut t = svc.spec.template.clone();
    if let (Some(i), Some(pod)) = (svc.spec.main_container(), t.spec.as_mut()) {
        pod.containers[i].image = Some(image.to_string());
    }
    t
}

/// What counts in a revision of `svc` with `template`: what the template reads, minus
/// what the manifest ignores, plus what it tracks.
fn sources(svc: &ZmqService, template: &PodTemplateSpec) -> BTreeSet<ConfigRef> {
    let tracking = &svc.spec.config_tracking;
    let ignored: BTreeSet<ConfigRef> = tracking.ignore.iter().cloned().collect();
    let mut counted = references(template, &ignored);
    counted.extend(tracking.track.iter().cloned());
    counted
}

/// The ConfigMaps the pods of `svc` read (and what it tracks), by name.
pub fn config_maps_read(svc: &ZmqService) -> Vec<String> {
    sources(svc, &svc.spec.template)
        .into_iter()
        .filter(|r| r.kind == ConfigKind::ConfigMap)
        .map(|r| r.name)
        .collect()
}

/// Whether the pods of `svc` read a Secret (Secrets are read, never watched).
pub fn reads_secrets(svc: &ZmqService) -> bool {
    sources(svc, &svc.spec.template)
        .iter()
        .any(|r| r.kind == ConfigKind::Secret)
}

/// What releasing `image` with the manifest's pod template means now: reads every
/// ConfigMap and Secret the template reads (a missing one is an error naming it).
pub async fn release_of(client: &Client, svc: &ZmqService, image: &str) -> Result<Release, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let manifest_template = template_with_image(svc, image);
    let mut configs = BTreeMap::new();
    let mut secret_types = BTreeMap::new();
    for source in sources(svc, &manifest_template) {
        let content =
            read(client, &ns, source.kind, &source.name)
                .await?
                .map(|(content, secret_type)| {
                    if let Some(t) = secret_type {
                        secret_types.insert(source.name.clone(), t);
                    }
                    content
                });
        let content = content.ok_or_else(|| {
            Error::Invalid(format!(
                "the pod template reads {source}, which does not exist in namespace {ns}: create it, or remove the reference"
            ))
        })?;
        configs.insert(source, content);
    }
    let digest = digest(&manifest_template, &configs);
    let copies: BTreeMap<ConfigRef, String> = configs
        .keys()
        .map(|r| (r.clone(), copy_name(r, &digest)))
        .collect();
    let mut template = manifest_template.clone();
    point_to_copies(&mut template, &copies);
    Ok(Release {
        revision: Revision {
            image: image.to_string(),
            digest: Some(digest),
        }
        .to_string(),
        template,
        configs,
        manifest_template,
        secret_types,
    })
}

/// The content of ConfigMap or Secret `name` in `ns` (and a Secret's type); `None` when
/// there is none.
async fn read(
    client: &Client,
    ns: &str,
    kind: ConfigKind,
    name: &str,
) -> Result<Option<(ConfigContent, Option<String>)>, Error> {
    Ok(match kind {
        ConfigKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|cm| (config_map_content(&cm), None)),
        ConfigKind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|s| (secret_content(&s), s.type_)),
    })
}

fn config_map_content(cm: &ConfigMap) -> ConfigContent {
    let mut c: ConfigContent = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    c.extend(
        cm.binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    c
}

fn secret_content(s: &Secret) -> ConfigContent {
    let mut c: ConfigContent = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    c.extend(
        s.string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
    );
    c
}

fn owned_meta(svc: &ZmqService, name: String, digest: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: svc.namespace(),
        labels: Some(BTreeMap::from([
            (SERVICE_LABEL.to_string(), svc.name_any()),
            (REVISION_LABEL.to_string(), digest.to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "zdeploy".to_string(),
            ),
        ])),
        owner_references: svc.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The pod template of `revision`: its record's, or, when it has none yet and `release`
/// is that revision, `release`'s once its copies and record are made (they never change
/// after). `None` for a revision named by its image alone or without a record.
pub async fn template_of(
    client: &Client,
    svc: &ZmqService,
    revision: &str,
    release: Option<&Release>,
) -> Result<Option<PodTemplateSpec>, Error> {
    if let Some(t) = recorded(client, svc, revision).await? {
        return Ok(Some(t));
    }
    match (release, Revision::parse(revision).digest) {
        (Some(release), Some(digest)) => {
            record(client, svc, release, &digest).await?;
            Ok(Some(release.template.clone()))
        }
        _ => Ok(None),
    }
}

/// Makes `release`'s copies and its record, `NAME-rev-DIGEST`.
async fn record(
    client: &Client,
    svc: &ZmqService,
    release: &Release,
    digest: &str,
) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let records = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let name = record_name(&svc.name_any(), digest);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    for (source, content) in &release.configs {
        let copy = copy_name(source, digest);
        let meta = owned_meta(svc, copy.clone(), digest);
        match source.kind {
            ConfigKind::ConfigMap => {
                // From the content digested, not a second read: text as data, the rest
                // as binaryData (files mounted from either are the same bytes).
                let (mut data, mut binary) = (BTreeMap::new(), BTreeMap::new());
                for (k, v) in content {
                    match std::str::from_utf8(v) {
                        Ok(text) => {
                            data.insert(k.clone(), text.to_string());
                        }
                        Err(_) => {
                            binary.insert(k.clone(), ByteString(v.clone()));
                        }
                    }
                }
                let cm = ConfigMap {
                    metadata: meta,
                    data: Some(data),
                    binary_data: (!binary.is_empty()).then_some(binary),
                    immutable: Some(true),
                };
                records.patch(&copy, &params, &Patch::Apply(&cm)).await?;
            }
            ConfigKind::Secret => {
                let secret = Secret {
                    metadata: meta,
                    type_: release.secret_types.get(&source.name).cloned(),
                    data: Some(
                        content
                            .iter()
                            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                            .collect(),
                    ),
                    immutable: Some(true),
                    ..Default::default()
                };
                secrets
                    .patch(&copy, &params, &Patch::Apply(&secret))
                    .await?;
            }
        }
    }
    let template = serde_json::to_string(&release.template)
        .map_err(|e| Error::Invalid(format!("a pod template: {e}")))?;
    let rec = ConfigMap {
        metadata: owned_meta(svc, name.clone(), digest),
        data: Some(BTreeMap::from([(TEMPLATE_KEY.to_string(), template)])),
        immutable: Some(true),
        ..Default::default()
    };
    records.patch(&name, &params, &Patch::Apply(&rec)).await?;
    Ok(())
}

/// The pod template recorded for `revision`; `None` for a revision named by its image
/// alone (released before revisions covered configuration) or without a record.
pub async fn recorded(
    client: &Client,
    svc: &ZmqService,
    revision: &str,
) -> Result<Option<PodTemplateSpec>, Error> {
    let Some(digest) = Revision::parse(revision).digest else {
        return Ok(None);
    };
    let ns = svc.namespace().unwrap_or_default();
    let records = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let Some(rec) = records
        .get_opt(&record_name(&svc.name_any(), &digest))
        .await?
    else {
        return Ok(None);
    };
    let text = rec
        .data
        .as_ref()
        .and_then(|d| d.get(TEMPLATE_KEY))
        .ok_or_else(|| Error::Invalid(format!("the record of {revision} has no {TEMPLATE_KEY}")))?;
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| Error::Invalid(format!("the record of {revision}: {e}")))
}

/// Deletes the records and copies of `svc`'s revisions other than `keep`.
pub async fn collect(client: &Client, svc: &ZmqService, keep: &[String]) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let kept: BTreeSet<String> = keep
        .iter()
        .filter_map(|r| Revision::parse(r).digest)
        .collect();
    let params = ListParams::default().labels(&format!("{SERVICE_LABEL}={}", svc.name_any()));
    let stale = |labels: &BTreeMap<String, String>| {
        labels
            .get(REVISION_LABEL)
            .is_some_and(|d| !kept.contains(d))
    };
    let maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    for cm in maps.list(&params).await? {
        if stale(cm.labels()) && is_owned_by(&cm, svc) {
            maps.delete(&cm.name_any(), &DeleteParams::default())
                .await?;
        }
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    for s in secrets.list_metadata(&params).await? {
        if stale(s.labels()) && is_owned_by(&s, svc) {
            secrets
                .delete(&s.name_any(), &DeleteParams::default())
                .await?;
        }
    }
    Ok(())
}

/// Whether `svc` owns `o` (a label is not enough to delete anything).
fn is_owned_by(o: &impl Resource, svc: &ZmqService) -> bool {
    let uid = svc.meta().uid.as_deref();
    o.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| Some(r.uid.as_str()) == uid)
}

/// The services in `cm`'s namespace whose pod template reads it.
pub fn readers_of<K: kube::Resource>(
    cm: &K,
    services: &[std::sync::Arc<ZmqService>],
) -> Vec<kube::runtime::reflector::ObjectRef<ZmqService>> {
    let source = ConfigRef {
        kind: ConfigKind::ConfigMap,
        name: cm.meta().name.clone().unwrap_or_default(),
    };
    services
        .iter()
        .filter(|s| s.metadata.namespace == cm.meta().namespace)
        .filter(|s| sources(s, &s.spec.template).contains(&source))
        .map(|s| kube::runtime::reflector::ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// What `release` changes from the recorded revision `from`, in words (no values).
pub async fn changes_from(
    client: &Client,
    svc: &ZmqService,
    from: &str,
    release: &Release,
) -> Result<Vec<String>, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let old = Revision::parse(from);
    let recorded_template = recorded(client, svc, from).await?;
    let digest = old.digest.filter(|_| recorded_template.is_some());
    let mut template = recorded_template.unwrap_or_else(|| template_with_image(svc, &old.image));
    // Its sources (the copies it points at, and what the manifest tracks), read from
    // its copies; a revision named by image alone read the sources themselves.
    let copy_of = |r: &ConfigRef| match &digest {
        Some(d) => copy_name(r, d),
        None => r.name.clone(),
    };
    let mut renamed = BTreeMap::new();
    let mut counted: BTreeSet<ConfigRef> = svc.spec.config_tracking.track.iter().cloned().collect();
    for r in references(&template, &BTreeSet::new()) {
        let source = match &digest {
            Some(d) => match r.name.strip_suffix(&format!("-{d}")) {
                Some(name) => ConfigRef {
                    kind: r.kind,
                    name: name.to_string(),
                },
                // Not a copy: an ignored source, read as it is.
                None => continue,
            },
            None if svc.spec.config_tracking.ignore.contains(&r) => continue,
            None => r.clone(),
        };
        renamed.insert(r, source.name.clone());
        counted.insert(source);
    }
    let mut configs = BTreeMap::new();
    for source in counted {
        let content = read(client, &ns, source.kind, &copy_of(&source)).await?;
        configs.insert(source, content.map(|(c, _)| c).unwrap_or_default());
    }
    point_to_copies(&mut template, &renamed);
    Ok(changes(
        (&template, &configs),
        (&release.manifest_template, &release.configs),
    ))
}
