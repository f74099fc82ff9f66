//! The LLB graph: content-addressed build operations (source, exec, file, merge) and the contract between
//! the frontend and the solver. Nothing here knows about Dockerfiles, processes or disks.
//!
//! A [`Definition`] is a topologically sorted list of [`Vertex`]es plus the output that is the build result.
//! Every vertex has a blake3 [`Digest`] over a canonical encoding of its op, its inputs' digests and its
//! platform ([`StableHash`]), so the same operation gets the same digest wherever it comes from, and the
//! solver collapses identical vertices into one node for free.

mod digest;
pub mod image;
mod op;
mod platform;

pub use digest::{Digest, StableHash, StableHasher};
pub use op::*;
pub use platform::{Platform, PlatformError};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};
use serde::Serialize;
use std::collections::HashMap;

/// Where an op reads from: output `output` of the vertex with digest `vertex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Input {
    pub vertex: Digest,
    pub output: u32,
}

/// Human-facing facts about a vertex that do not change what it computes, so they are not hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// What progress output shows, e.g. `[build 2/4] RUN make`.
    pub description: String,
    /// The stage the vertex belongs to, for `--no-cache-filter` and progress grouping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Where in the Dockerfile the vertex comes from (1-based start and end lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<(usize, usize)>,
    /// True when the vertex must run even if a cached result exists (`--no-cache`, `--no-cache-filter`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vertex {
    pub digest: Digest,
    pub op: Op,
    pub inputs: Vec<Input>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    pub meta: Meta,
}

impl Vertex {
    pub fn new(op: Op, inputs: Vec<Input>, platform: Option<Platform>, meta: Meta) -> Self {
        let digest = vertex_digest(&op, &inputs, platform.as_ref());
        Vertex {
            digest,
            op,
            inputs,
            platform,
            meta,
        }
    }
}

fn vertex_digest(op: &Op, inputs: &[Input], platform: Option<&Platform>) -> Digest {
    let mut hasher = StableHasher::new("kiln-llb-vertex-v1");
    op.stable_hash(&mut hasher);
    hasher.write_len(inputs.len());
    for input in inputs {
        hasher.write_bytes(input.vertex.as_bytes());
        hasher.write_u64(u64::from(input.output));
    }
    platform.stable_hash(&mut hasher);
    hasher.finish()
}

/// A build graph: vertices in dependency order (inputs before users) and the output that is the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Definition {
    pub vertices: Vec<Vertex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<Input>,
}

impl Definition {
    /// Adds a vertex unless an identical one is already there, and returns its output 0.
    /// Inputs must already be in the definition, which keeps the list topologically sorted.
    pub fn add(&mut self, vertex: Vertex) -> Input {
        let input = Input {
            vertex: vertex.digest,
            output: 0,
        };
        if !self.vertices.iter().any(|v| v.digest == vertex.digest) {
            debug_assert!(vertex.inputs.iter().all(|i| self.get(&i.vertex).is_some()));
            self.vertices.push(vertex);
        }
        input
    }

    pub fn get(&self, digest: &Digest) -> Option<&Vertex> {
        self.vertices.iter().find(|v| &v.digest == digest)
    }

    /// The definition as a graph: one node per vertex (its index in `vertices`), an edge from each input to
    /// the vertex that reads it. Inputs that are not in the definition are left out.
    pub fn graph(&self) -> (DiGraph<usize, ()>, HashMap<Digest, NodeIndex>) {
        let mut graph = DiGraph::with_capacity(self.vertices.len(), self.vertices.len());
        let nodes: HashMap<Digest, NodeIndex> = self
            .vertices
            .iter()
            .enumerate()
            .map(|(i, v)| (v.digest, graph.add_node(i)))
            .collect();
        for v in &self.vertices {
            for input in &v.inputs {
                if let Some(&from) = nodes.get(&input.vertex) {
                    graph.add_edge(from, nodes[&v.digest], ());
                }
            }
        }
        (graph, nodes)
    }

    /// Drops every vertex the root does not depend on: what is not reachable from the root against the
    /// edges.
    pub fn prune(&mut self) {
        let Some(root) = self.root else {
            self.vertices.clear();
            return;
        };
        let (graph, nodes) = self.graph();
        let mut needed = vec![false; self.vertices.len()];
        if let Some(&start) = nodes.get(&root.vertex) {
            let reversed = Reversed(&graph);
            let mut walk = Dfs::new(reversed, start);
            while let Some(node) = walk.next(reversed) {
                needed[graph[node]] = true;
            }
        }
        let mut keep = needed.into_iter();
        self.vertices.retain(|_| keep.next().unwrap_or(false));
    }

    /// Graphviz rendering for `kiln debug llb --format dot`.
    pub fn to_dot(&self) -> String {
        let (graph, _) = self.graph();
        let mut out = String::from("digraph llb {\n  rankdir=BT;\n  node [shape=box, fontname=monospace];\n");
        for node in graph.node_indices() {
            let v = &self.vertices[graph[node]];
            let label = if v.meta.description.is_empty() {
                v.op.kind()
            } else {
                &v.meta.description
            };
            out.push_str(&format!(
                "  \"{}\" [label=\"{}\\n{}\"];\n",
                v.digest,
                escape_dot(label),
                v.digest.short()
            ));
        }
        for edge in graph.edge_indices() {
            if let Some((from, to)) = graph.edge_endpoints(edge) {
                let (from, to) = (&self.vertices[graph[from]], &self.vertices[graph[to]]);
                out.push_str(&format!("  \"{}\" -> \"{}\";\n", from.digest, to.digest));
            }
        }
        out.push_str("}\n");
        out
    }
}

fn escape_dot(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
