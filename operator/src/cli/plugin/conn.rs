//! The kubectl connection flags every plugin command takes (`--kubeconfig`, `--context`,
//! `-n/--namespace`) and the client they make; talks to the cluster only to connect.

use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

use super::Error;

/// Where the cluster is, as kubectl's own flags say it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Conn {
    /// Namespace of the object (default: the kubeconfig context's namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// A connected client and the namespace the command works in.
pub struct Session {
    pub client: Client,
    pub namespace: String,
}

impl Conn {
    /// The client config the flags describe.
    async fn config(&self) -> Result<Config, Error> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let with_fix = |e: kube::config::KubeconfigError| {
            let fix = match &self.context {
                Some(c) => format!(
                    "check --context {c:?} (`kubectl config get-contexts` lists the contexts)"
                ),
                None => "check --kubeconfig or $KUBECONFIG".to_string(),
            };
            Error::Connect(format!("{e}; {fix}"))
        };
        if let Some(path) = &self.kubeconfig {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                Error::Connect(format!(
                    "--kubeconfig {}: {e}; give the path of a readable kubeconfig file",
                    path.display()
                ))
            })?;
            return Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(with_fix);
        }
        if self.context.is_some() {
            return Config::from_kubeconfig(&options).await.map_err(with_fix);
        }
        Config::infer().await.map_err(|e| {
            Error::Connect(format!(
                "{e}; set $KUBECONFIG or pass --kubeconfig (or run inside a cluster)"
            ))
        })
    }

    /// Connects; the namespace is `-n` or else the context's default.
    pub async fn connect(&self) -> Result<Session, Error> {
        let config = self.config().await?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| Error::Connect(e.to_string()))?;
        Ok(Session { client, namespace })
    }

    /// The namespace for an object that is only printed (`--dry-run=client`): `-n`, else the
    /// kubeconfig context's, else `default`; no connection is made.
    pub async fn namespace_offline(&self) -> String {
        if let Some(ns) = &self.namespace {
            return ns.clone();
        }
        match self.config().await {
            Ok(c) => c.default_namespace,
            Err(_) => "default".to_string(),
        }
    }
}
