//! The locked `hello` image is valid end to end: the Docker engine pulls it
//! by digest from the loopback registry `lock` pushed to, and a command in it
//! runs as the `agent` user with the skill and Claude Code's settings in
//! place and the policy label on the image.

mod common;
mod lock_support;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, WaitContainerOptions,
};
use futures_util::{FutureExt, StreamExt};
use lock_support::{Project, Variation, digest_of};

#[tokio::test]
async fn engine_pulls_the_locked_hello_by_digest_and_runs_it_as_agent() {
    if !common::require_busybox() {
        return;
    }
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let out = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let digest = digest_of(&out);
    let image = format!("{}/bottle/hello@{digest}", reg.host());
    let container = format!("bottle-test-lock-engine-{}", std::process::id());

    let body = AssertUnwindSafe(async {
        let mut s = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.clone()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = s.next().await {
            item.expect("engine pull by digest");
        }
        let inspect = docker.inspect_image(&image).await.unwrap();
        let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
        let policy = bottle::policy::Policy::from_label(
            labels.get(bottle::policy::POLICY_LABEL).map(String::as_str),
        )
        .expect("policy label");
        assert_eq!(policy.agent, "hello");
        assert!(policy.egress.allow.contains(&"example.com".to_string()));

        let mut test_labels = HashMap::new();
        test_labels.insert(common::TEST_LABEL.to_string(), "1".to_string());
        let script = "id; echo HOME=$HOME; cat /home/agent/.claude/skills/greet/SKILL.md; \
                      cat /home/agent/.claude.json; echo hi > /home/agent/probe && echo writable";
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(container.clone()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(image.clone()),
                    cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
                    labels: Some(test_labels),
                    network_disabled: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        docker.start_container(&container, None).await.unwrap();
        let mut code = -1;
        let mut w = docker.wait_container(&container, None::<WaitContainerOptions>);
        while let Some(r) = w.next().await {
            code = r.unwrap().status_code;
        }
        let mut text = String::new();
        let mut l = docker.logs(
            &container,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "all".into(),
                ..Default::default()
            }),
        );
        while let Some(chunk) = l.next().await {
            text.push_str(&chunk.unwrap().to_string());
        }
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("uid=1000(agent) gid=1000(agent)"), "{text}");
        assert!(text.contains("HOME=/home/agent"), "{text}");
        assert!(text.contains("name: greet"), "{text}");
        assert!(text.contains("\"hasCompletedOnboarding\": true"), "{text}");
        assert!(text.contains("writable"), "{text}");
    })
    .catch_unwind()
    .await;

    let _ = docker
        .remove_container(
            &container,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    let _ = docker
        .remove_image(
            &image,
            Some(RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
    if let Err(e) = body {
        std::panic::resume_unwind(e);
    }
}
