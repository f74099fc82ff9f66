//! Exporters: turn solver results into OCI image manifests, configs and indexes and write them to the store,
//! an OCI or docker archive, a directory, or a registry. Filled in by the exporter issue.
