//! `media`: uploads (`POST /_matrix/media/v3/upload`) then authenticated downloads
//! (`GET /_matrix/client/v1/media/download/{server}/{id}`) of files of a chosen size; MB/s and
//! latency. Every acknowledged upload must download byte for byte.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;

use crate::{
    cli::MediaArgs,
    error::{Error, Result},
    report::{Measurement, ScenarioResult, Verification},
    scenarios::{Ctx, require, stop_sampler},
    tasks::{partition, run_bounded},
    world::World,
};

/// The deterministic content of file `index` (xorshift bytes), so downloads can be compared
/// without keeping every upload in memory.
fn content(seed: u64, index: usize, size: usize) -> Bytes {
    let mut state = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    Bytes::from(data)
}

pub(crate) async fn run(ctx: &Ctx, world: &mut World, args: &MediaArgs) -> Result<ScenarioResult> {
    require(
        args.count > 0 && args.concurrency > 0 && args.users > 0,
        "--count, --concurrency and --users must be positive",
    )?;
    require(args.size > 0, "--size must be positive")?;
    let setup_started = Instant::now();
    let users = Arc::new(world.ensure_pool(ctx, "media", args.users).await?);
    let setup_s = setup_started.elapsed().as_secs_f64();
    let seed: u64 = rand::random();
    let size = args.size;

    let sampler = ctx.sampler()?;
    let deadline = ctx.measure_deadline();
    let api = ctx.api.clone();
    let uploaders = Arc::clone(&users);
    let started = Instant::now();
    let results = run_bounded(
        &format!("uploading {} files", args.count),
        args.count,
        args.concurrency,
        deadline,
        move |i| {
            let api = api.clone();
            let users = Arc::clone(&uploaders);
            async move {
                let data = content(seed, i, size);
                let t = Instant::now();
                let mxc = api
                    .upload(
                        users[i % users.len()].token(),
                        data,
                        "application/octet-stream",
                        &format!("load-{i}.bin"),
                    )
                    .await?;
                Ok((mxc, t.elapsed().as_secs_f64() * 1000.0))
            }
        },
    )
    .await;
    let upload_s = started.elapsed().as_secs_f64();
    let uploads = partition(results);

    // Downloads by another user than the uploader.
    let uploaded: Arc<Vec<(usize, String)>> =
        Arc::new(uploads.ok.iter().map(|(i, (mxc, _))| (*i, mxc.clone())).collect());
    let api = ctx.api.clone();
    let downloaders = Arc::clone(&users);
    let jobs = Arc::clone(&uploaded);
    let started = Instant::now();
    let results = run_bounded(
        &format!("downloading {} files", uploaded.len()),
        uploaded.len(),
        args.concurrency,
        deadline,
        move |j| {
            let api = api.clone();
            let users = Arc::clone(&downloaders);
            let jobs = Arc::clone(&jobs);
            async move {
                let (i, mxc) = &jobs[j];
                let t = Instant::now();
                let body = api.download(users[(i + 1) % users.len()].token(), mxc).await?;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if body != content(seed, *i, size) {
                    return Err(Error::new(format!(
                        "{mxc}: downloaded {} bytes that differ from the upload",
                        body.len()
                    )));
                }
                Ok(ms)
            }
        },
    )
    .await;
    let download_s = started.elapsed().as_secs_f64();
    let resources = stop_sampler(sampler).await;
    let downloads = partition(results);

    let mut verification = Verification {
        members_checked: users.len() as u64,
        expected: uploaded.len() as u64,
        found_in_sync: downloads.ok.len() as u64,
        missing: downloads.failed,
        ..Verification::default()
    };
    for example in &downloads.examples {
        verification.example(example.clone());
    }
    let mb = |count: usize, seconds: f64| {
        if seconds > 0.0 { (count * size) as f64 / 1_048_576.0 / seconds } else { 0.0 }
    };
    let upload = Measurement::new(
        "upload",
        "files",
        uploads.failed,
        upload_s,
        uploads.ok.iter().map(|(_, (_, ms))| *ms).collect(),
    )
    .with("mb_per_s", mb(uploads.ok.len(), upload_s))
    .with("file_bytes", size as f64);
    let download = Measurement::new(
        "download",
        "files",
        downloads.failed,
        download_s,
        downloads.ok.iter().map(|(_, ms)| *ms).collect(),
    )
    .with("mb_per_s", mb(downloads.ok.len(), download_s))
    .with("file_bytes", size as f64);
    let mut notes: Vec<String> =
        uploads.examples.iter().map(|e| format!("upload error: {e}")).collect();
    notes.push("verification: expected = acknowledged uploads; found = downloaded byte-identical by another user".to_owned());
    Ok(ScenarioResult {
        name: "media".to_owned(),
        params: serde_json::to_value(args)?,
        setup_s,
        measurements: vec![upload, download],
        missed_deliveries: 0,
        verification,
        cpu_s_per_1000_events: None,
        resources,
        rate_limited_retries: 0,
        errors: uploads.failed + downloads.failed,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_deterministic_and_sized() {
        assert_eq!(content(7, 3, 1000), content(7, 3, 1000));
        assert_ne!(content(7, 3, 1000), content(7, 4, 1000));
        assert_eq!(content(1, 0, 13).len(), 13);
    }
}
