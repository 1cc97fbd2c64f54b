"""shipper: a Kubernetes node log shipper."""
