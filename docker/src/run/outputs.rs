//! Collecting a finished container's outputs (after exit 0): from the bind-mounted host folder,
//! or streamed from the archive API into the collect folder through a small bounded channel.

use std::path::Path;

use bollard::query_parameters::{ContainerArchiveInfoOptions, DownloadFromContainerOptions};
use futures_util::StreamExt;

use super::{collect, env_failure, monitor, ContainerSpec, Failure};
use crate::error::{is_not_found, short_reason};
use crate::{Daemon, Transfer};

impl Daemon {
    pub(super) async fn collect(&self, spec: &ContainerSpec, id: &str) -> Result<(), Failure> {
        let limits = spec.limits;
        let joined = |e: tokio::task::JoinError| Failure::Environment(format!("cannot collect the outputs: {e}"));
        if self.transfer == Transfer::Bind {
            let (ws, outs, to) = (spec.workspace.clone(), spec.outputs.clone(), spec.collect_to.clone());
            return tokio::task::spawn_blocking(move || {
                // A last measurement: the step may have filled its workspace and exited between
                // two of `follow`'s.
                match monitor::usage(&ws, limits.workspace) {
                    Ok(used) if used > limits.workspace => return Err(Failure::WorkspaceLimit { limit: limits.workspace }),
                    Ok(_) => {}
                    Err(e) => return Err(Failure::Environment(format!("cannot measure the workspace of the step: {e}"))),
                }
                collect::from_host(&ws, &outs, &to, limits.outputs)
            })
            .await
            .map_err(joined)?;
        }
        let collected = self.collect_archive(spec, id).await;
        if collected.is_err() {
            // Files are written as they stream in: a rejected step leaves none of them behind.
            let to = spec.collect_to.clone();
            let _ = tokio::task::spawn_blocking(move || collect::empty_folder(&to)).await;
        }
        collected
    }

    /// Archive transfer: stream each output's tar into `collect_to`, then check and create the
    /// symlinks.
    async fn collect_archive(&self, spec: &ContainerSpec, id: &str) -> Result<(), Failure> {
        let joined = |e: tokio::task::JoinError| Failure::Environment(format!("cannot collect the outputs: {e}"));
        let mut budget = collect::Budget::new(spec.limits.outputs);
        let mut links = Vec::new();
        for output in &spec.outputs {
            let rel = collect::check_output_path(output)?;
            for parent in collect::parents(&rel) {
                let path = Path::new("/workspace").join(&parent).display().to_string();
                match self.docker.get_container_archive_info(id, Some(ContainerArchiveInfoOptions { path })).await {
                    Ok(stat) if !stat.link_target.is_empty() => return Err(collect::symlinked_parent(output, &parent)),
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => return Err(Failure::MissingOutput(output.clone())),
                    Err(e) => return Err(env_failure(&format!("look up output `{output}`"), &e)),
                }
            }
            // The download streams into the tar reader on a blocking thread through a small
            // bounded channel: memory stays a few chunks, whatever the output's size. When the
            // reader stops (limit passed, bad entry), the channel closes and the download is
            // dropped.
            let path = Path::new("/workspace").join(rel).display().to_string();
            let mut stream = self.docker.download_from_container(id, Some(DownloadFromContainerOptions { path }));
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let (out, to) = (output.clone(), spec.collect_to.clone());
            let reader = tokio::task::spawn_blocking(move || {
                let result = collect::from_tar(&out, ChannelReader { rx, chunk: Vec::new(), pos: 0 }, &to, &mut budget, &mut links);
                (result, budget, links)
            });
            let (mut first, mut missing, mut failed) = (true, false, None);
            while let Some(chunk) = stream.next().await {
                let item = match chunk {
                    Ok(bytes) => Ok(bytes.to_vec()),
                    Err(e) if first && is_not_found(&e) => {
                        missing = true;
                        break;
                    }
                    Err(e) => {
                        failed = Some(env_failure(&format!("download output `{output}`"), &e));
                        Err(std::io::Error::other("the download failed"))
                    }
                };
                first = false;
                if tx.send(item).await.is_err() || failed.is_some() {
                    break;
                }
            }
            drop(tx);
            drop(stream);
            let (result, b, l) = reader.await.map_err(joined)?;
            (budget, links) = (b, l);
            if missing {
                return Err(Failure::MissingOutput(output.clone()));
            }
            match (result, failed) {
                (Err(f @ (Failure::OutputsLimit { .. } | Failure::UnsafeOutput { .. })), _) => return Err(f),
                (_, Some(f)) => return Err(f),
                (result, None) => result?,
            }
        }
        // Symlinks last, once everything they may lead through is known: inside the outputs from
        // the collected files, elsewhere in /workspace from the stopped container.
        let (docker, id, handle) = (self.docker.clone(), id.to_string(), tokio::runtime::Handle::current());
        let (outs, to) = (spec.outputs.clone(), spec.collect_to.clone());
        tokio::task::spawn_blocking(move || {
            let mut outside = |rel: &Path| -> std::io::Result<collect::Node> {
                let path = Path::new("/workspace").join(rel).display().to_string();
                match handle.block_on(docker.get_container_archive_info(&id, Some(ContainerArchiveInfoOptions { path }))) {
                    // The daemon reports a symlink's target resolved within the container.
                    Ok(stat) if !stat.link_target.is_empty() => Ok(collect::Node::Symlink(stat.link_target.into())),
                    // Go's os.ModeDir.
                    Ok(stat) if stat.file_mode & (1 << 31) != 0 => Ok(collect::Node::Dir),
                    Ok(_) => Ok(collect::Node::File),
                    Err(e) if is_not_found(&e) => Ok(collect::Node::Missing),
                    Err(e) => Err(std::io::Error::other(short_reason(&e))),
                }
            };
            collect::finish_links(&to, &outs, links, &mut outside)
        })
        .await
        .map_err(joined)?
    }
}

/// The blocking end of the download channel of [`DockerExecutor::collect`], as a `Read`.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => (self.chunk, self.pos) = (chunk, 0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
