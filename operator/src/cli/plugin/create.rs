//! `backup create|get|describe` and `restore create|get|describe`: creates the object the
//! flags describe (or prints it with `--dry-run`), lists them, and waits with `--wait`.
//! Talks to the cluster.

use std::process::ExitCode;

use holdfast_api::{Backup, Restore};
use kube::api::{Api, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use super::conn::Conn;
use super::describe::DescribeOne;
use super::progress::{self, Outcome};
use super::spec::{self, BackupFlags, RestoreFlags};
use super::watch::{self, Target};
use super::{EXIT_CODES, Error};

/// `--dry-run` strategies, as kubectl has them.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// Create the object.
    None,
    /// Print the object; nothing is sent to the cluster.
    Client,
    /// Send it to the API server for validation and admission, without persisting it.
    Server,
}

/// Output formats for objects.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Yaml,
    Json,
    /// `kind.group/name`, as `kubectl -o name`.
    Name,
}

/// Flags of both `create` commands besides the object's fields.
#[derive(clap::Args, Debug, Clone)]
pub struct CreateFlags {
    #[command(flatten)]
    pub conn: Conn,
    /// Wait until it ends, showing progress; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (`10m`, `1h`); default: wait as long as it takes.
    #[arg(long, requires = "wait")]
    pub timeout: Option<String>,
    /// `client`: print the object and create nothing; `server`: validate it on the API
    /// server without creating it. Write it as `--dry-run=client`.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
    /// Print the object (`yaml`, `json`) or its name (`name`) instead of a sentence.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
}

/// `backup create NAME`.
#[derive(clap::Args, Debug)]
pub struct CreateBackup {
    /// Name of the Backup.
    pub name: String,
    #[command(flatten)]
    pub flags: BackupFlags,
    #[command(flatten)]
    pub create: CreateFlags,
}

/// `backup …` commands.
#[derive(clap::Subcommand, Debug)]
pub enum BackupCommand {
    /// Create a Backup (in the operator's namespace to select other namespaces; in an
    /// application namespace it covers that namespace only).
    #[command(after_help = EXIT_CODES)]
    Create(Box<CreateBackup>),
    /// List Backups, or print one with -o.
    Get(GetArgs),
    /// Show a Backup (same as `describe backup NAME`).
    #[command(after_help = EXIT_CODES)]
    Describe(DescribeOne),
}

/// `restore create NAME`.
#[derive(clap::Args, Debug)]
pub struct CreateRestore {
    /// Name of the Restore.
    pub name: String,
    #[command(flatten)]
    pub flags: RestoreFlags,
    #[command(flatten)]
    pub create: CreateFlags,
}

/// `restore …` commands.
#[derive(clap::Subcommand, Debug)]
pub enum RestoreCommand {
    /// Create a Restore of a Backup (or of a Schedule's newest restore point).
    #[command(after_help = EXIT_CODES)]
    Create(Box<CreateRestore>),
    /// List Restores, or print one with -o.
    Get(GetArgs),
    /// Show a Restore (same as `describe restore NAME`).
    #[command(after_help = EXIT_CODES)]
    Describe(DescribeOne),
}

/// `get [NAME]`.
#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// One object to print (default: list them all).
    pub name: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Print as `yaml`, `json` or `name` instead of a table.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
}

/// Text of `obj` in `format`.
pub fn render<K: Serialize + Resource<DynamicType = ()>>(
    obj: &K,
    format: Output,
) -> Result<String, Error> {
    match format {
        Output::Yaml => serde_yaml::to_string(obj).map_err(|e| Error::Output(e.to_string())),
        Output::Json => serde_json::to_string_pretty(obj)
            .map(|s| s + "\n")
            .map_err(|e| Error::Output(e.to_string())),
        Output::Name => Ok(format!(
            "{}.{}/{}\n",
            K::kind(&()).to_lowercase(),
            K::group(&()),
            obj.meta().name.clone().unwrap_or_default()
        )),
    }
}

/// Creates `obj` as `create` says; `Ok(None)` when nothing more is to be done (a dry run).
async fn create_object<K>(
    obj: K,
    create: &CreateFlags,
    api: &Api<K>,
    namespace: &str,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).to_lowercase();
    let name = obj.name_any();
    let pp = PostParams {
        dry_run: create.dry_run == DryRun::Server,
        ..Default::default()
    };
    let made = api.create(&pp, &obj).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => Error::Missing(format!(
            "{kind} {name} already exists in namespace {namespace}; choose another NAME, or delete it first (`kubectl delete {kind} {name} -n {namespace}`)"
        )),
        e => Error::kube(format!("create {kind} {namespace}/{name}"))(e),
    })?;
    let suffix = if create.dry_run == DryRun::Server {
        " (server dry run)"
    } else {
        ""
    };
    match create.output {
        Some(o) => print!("{}", render(&made, o)?),
        None => println!("{kind}.{}/{name} created{suffix}", K::group(&())),
    }
    Ok((create.dry_run != DryRun::Server).then_some(made))
}

/// After creating: wait if asked, and turn the outcome into the exit code.
async fn finish(
    create: &CreateFlags,
    session: &super::conn::Session,
    target: Target,
) -> Result<ExitCode, Error> {
    if !create.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = create
        .timeout
        .as_deref()
        .map(|t| {
            t.parse::<holdfast_api::Duration>()
                .map(|d| d.as_std())
                .map_err(|e| spec::FlagError {
                    flag: "--timeout",
                    message: format!("{e}; write for example `10m` or `1h`"),
                })
        })
        .transpose()?;
    let view = watch::follow(session, &target, timeout).await?;
    let outcome = view.outcome.unwrap_or(Outcome::Deleted);
    let verdict = progress::verdict(&view);
    if outcome == Outcome::Completed {
        println!("{verdict}");
    } else {
        eprintln!("{verdict}");
    }
    Ok(ExitCode::from(outcome.exit_code()))
}

/// `backup …`.
pub async fn backup(cmd: BackupCommand) -> Result<ExitCode, Error> {
    match cmd {
        BackupCommand::Create(c) => {
            let CreateBackup {
                name,
                flags,
                create,
            } = *c;
            if create.dry_run == DryRun::Client {
                let ns = create.conn.namespace_offline().await;
                let b = spec::backup(&name, &ns, &flags)?;
                print!("{}", render(&b, create.output.unwrap_or(Output::Yaml))?);
                return Ok(ExitCode::SUCCESS);
            }
            let session = create.conn.connect().await?;
            let b = spec::backup(&name, &session.namespace, &flags)?;
            let api: Api<Backup> = Api::namespaced(session.client.clone(), &session.namespace);
            if create_object(b, &create, &api, &session.namespace)
                .await?
                .is_none()
            {
                return Ok(ExitCode::SUCCESS);
            }
            finish(&create, &session, Target::Backup(name)).await
        }
        BackupCommand::Get(args) => get::<Backup>(&args, backup_row).await,
        BackupCommand::Describe(one) => super::describe::one(&one, "backup").await,
    }
}

/// `restore …`.
pub async fn restore(cmd: RestoreCommand) -> Result<ExitCode, Error> {
    match cmd {
        RestoreCommand::Create(c) => {
            let CreateRestore {
                name,
                flags,
                create,
            } = *c;
            let now = jiff::Timestamp::now();
            if create.dry_run == DryRun::Client {
                let ns = create.conn.namespace_offline().await;
                let r = spec::restore(&name, &ns, &flags, now)?;
                print!("{}", render(&r, create.output.unwrap_or(Output::Yaml))?);
                return Ok(ExitCode::SUCCESS);
            }
            let session = create.conn.connect().await?;
            let r = spec::restore(&name, &session.namespace, &flags, now)?;
            let api: Api<Restore> = Api::namespaced(session.client.clone(), &session.namespace);
            if create_object(r, &create, &api, &session.namespace)
                .await?
                .is_none()
            {
                return Ok(ExitCode::SUCCESS);
            }
            finish(&create, &session, Target::Restore(name)).await
        }
        RestoreCommand::Get(args) => get::<Restore>(&args, restore_row).await,
        RestoreCommand::Describe(one) => super::describe::one(&one, "restore").await,
    }
}

fn backup_row(b: &Backup) -> Vec<String> {
    let st = b.status.clone().unwrap_or_default();
    row(
        b,
        progress::backup_view(b, &[]),
        st.storage_location,
        st.reason,
    )
}

fn restore_row(r: &Restore) -> Vec<String> {
    let st = r.status.clone().unwrap_or_default();
    row(r, progress::restore_view(r, &[]), st.backup, st.reason)
}

/// One line of `get`: namespace, name, phase, volumes, percent, then the kind's own columns.
fn row<K: ResourceExt>(
    o: &K,
    v: progress::View,
    column: Option<String>,
    reason: Option<String>,
) -> Vec<String> {
    let t = v.totals();
    vec![
        o.namespace().unwrap_or_default(),
        o.name_any(),
        v.phase,
        format!("{}/{}", t.volumes_done, t.volumes_total),
        format!("{}%", t.percent),
        column.unwrap_or_default(),
        reason.unwrap_or_default(),
    ]
}

/// Columns left-aligned to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

async fn get<K>(args: &GetArgs, row: fn(&K) -> Vec<String>) -> Result<ExitCode, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let session = args.conn.connect().await?;
    let kind = K::kind(&()).to_lowercase();
    let ns = session.namespace.clone();
    let api: Api<K> = if args.all_namespaces {
        Api::all(session.client.clone())
    } else {
        Api::namespaced(session.client.clone(), &ns)
    };
    if let Some(name) = &args.name {
        let obj = api
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("get {kind} {ns}/{name}")))?
            .ok_or_else(|| Error::Missing(format!("{kind} {name} not found in namespace {ns}; `kubectl holdfast {kind} get -n {ns}` lists them (-A: every namespace)")))?;
        match args.output {
            Some(o) => print!("{}", render(&obj, o)?),
            None => print!("{}", table(&header(&kind), &[row(&obj)])),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(format!("list {kind}s")))?;
    match args.output {
        Some(o) => {
            for obj in &list.items {
                if o == Output::Yaml {
                    println!("---");
                }
                print!("{}", render(obj, o)?);
            }
        }
        None if list.items.is_empty() => eprintln!("no {kind}s in namespace {ns}"),
        None => {
            let rows: Vec<Vec<String>> = list.items.iter().map(row).collect();
            print!("{}", table(&header(&kind), &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn header(kind: &str) -> Vec<&'static str> {
    if kind == "backup" {
        vec![
            "NAMESPACE",
            "NAME",
            "PHASE",
            "VOLUMES",
            "PROGRESS",
            "LOCATION",
            "REASON",
        ]
    } else {
        vec![
            "NAMESPACE",
            "NAME",
            "PHASE",
            "VOLUMES",
            "PROGRESS",
            "BACKUP",
            "REASON",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME", "PHASE"],
            &[vec!["a-long-name".into(), "Completed".into()]],
        );
        assert_eq!(t, "NAME          PHASE\na-long-name   Completed\n");
    }

    #[test]
    fn objects_render_as_kubectl_prints_them() {
        let b = spec::backup("b1", "ops", &BackupFlags::default()).expect("backup");
        assert_eq!(
            render(&b, Output::Name).expect("name"),
            "backup.holdfast.dev/b1\n"
        );
        let y = render(&b, Output::Yaml).expect("yaml");
        assert!(
            y.starts_with("apiVersion: holdfast.dev/v1alpha1\nkind: Backup\n"),
            "{y}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(&b, Output::Json).expect("json")).expect("parse");
        assert_eq!(j["metadata"]["name"], "b1");
    }
}
