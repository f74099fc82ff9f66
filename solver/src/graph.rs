//! The graph a solve runs: the union of the build's definitions (one per platform) as one petgraph graph,
//! identical vertices (same digest) collapsed into one node — which is how a `--platform=$BUILDPLATFORM`
//! stage shared by two target platforms is built once — checked for missing inputs and cycles, and in
//! topological order.

use std::collections::HashMap;

use kiln_llb::{Definition, Digest, Vertex};
use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::SolveError;

pub(crate) struct Graph {
    /// Inputs before the vertices that read them.
    pub vertices: Vec<Vertex>,
    /// Per vertex, the positions of its inputs (in the order of `Vertex::inputs`).
    pub inputs: Vec<Vec<usize>>,
    /// Vertices whose cached results must not be used (`--no-cache`, `--no-cache-filter`), and everything
    /// built on them: a step that runs again may produce something new.
    pub uncached: Vec<bool>,
    index: HashMap<Digest, usize>,
}

impl Graph {
    pub fn new(definitions: &[Definition]) -> Result<Graph, SolveError> {
        let mut graph: DiGraph<Vertex, ()> = DiGraph::new();
        let mut nodes: HashMap<Digest, NodeIndex> = HashMap::new();
        for v in definitions.iter().flat_map(|d| &d.vertices) {
            nodes.entry(v.digest).or_insert_with(|| graph.add_node(v.clone()));
        }
        for node in graph.node_indices().collect::<Vec<_>>() {
            for input in graph[node].inputs.clone() {
                let from = *nodes.get(&input.vertex).ok_or_else(|| {
                    SolveError::Graph(format!(
                        "vertex {} reads {}, which is not in the graph",
                        graph[node].digest, input.vertex
                    ))
                })?;
                graph.add_edge(from, node, ());
            }
        }
        let order = toposort(&graph, None).map_err(|cycle| {
            SolveError::Graph(format!(
                "vertex {} depends on itself",
                graph[cycle.node_id()].digest
            ))
        })?;
        let vertices: Vec<Vertex> = order.iter().map(|&n| graph[n].clone()).collect();
        let index: HashMap<Digest, usize> = vertices.iter().enumerate().map(|(i, v)| (v.digest, i)).collect();
        let inputs: Vec<Vec<usize>> = vertices
            .iter()
            .map(|v| v.inputs.iter().map(|input| index[&input.vertex]).collect())
            .collect();
        let mut uncached = vec![false; vertices.len()];
        for i in 0..vertices.len() {
            uncached[i] = vertices[i].meta.ignore_cache || inputs[i].iter().any(|&j| uncached[j]);
        }
        Ok(Graph {
            vertices,
            inputs,
            uncached,
            index,
        })
    }

    pub fn position(&self, digest: &Digest) -> Option<usize> {
        self.index.get(digest).copied()
    }
}
