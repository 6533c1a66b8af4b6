output "url" {
  description = "Where the service answers (the web page; the API is under /v2 and /api/v1)."
  value = (
    local.single
    ? (var.domain != null ? "https://${var.domain}" : "http://${aws_eip.web[0].public_ip}")
    : (var.certificate_arn != null ? "https://${var.domain}" : "http://${aws_lb.web[0].dns_name}")
  )
}

output "instance_id" {
  description = "single mode: the VM's instance id (null in scaled mode: see autoscaling_group_name)."
  value       = local.single ? aws_instance.web[0].id : null
}

output "elastic_ip" {
  description = "single mode: the VM's fixed public address; point domain's A record here."
  value       = local.single ? aws_eip.web[0].public_ip : null
}

output "autoscaling_group_name" {
  description = "scaled mode: the Auto Scaling Group whose instances serve the load balancer."
  value       = local.scaled ? aws_autoscaling_group.web[0].name : null
}

output "alb_dns_name" {
  description = "scaled mode: the load balancer's DNS name; point domain's CNAME (or Route 53 alias) here."
  value       = local.scaled ? aws_lb.web[0].dns_name : null
}

locals {
  # The instance SSM sessions go to: the VM, or the first instance of the group.
  ssm_target = (
    local.single
    ? aws_instance.web[0].id
    : "$(aws autoscaling describe-auto-scaling-groups --region ${var.region} --auto-scaling-group-names ${aws_autoscaling_group.web[0].name} --query 'AutoScalingGroups[0].Instances[0].InstanceId' --output text)"
  )
}

output "connect" {
  description = "Shell on a VM through SSM Session Manager (needs the AWS CLI and its session-manager-plugin); no SSH or open port involved."
  value       = "aws ssm start-session --region ${var.region} --target ${local.ssm_target}"
}

output "monitoring_tunnel" {
  description = "With monitoring: Grafana of a VM on http://127.0.0.1:3000 of your machine through SSM port forwarding, no open port involved (portNumber 9090 for Prometheus). null without monitoring."
  value = (
    var.monitoring
    ? "aws ssm start-session --region ${var.region} --target ${local.ssm_target} --document-name AWS-StartPortForwardingSession --parameters '{\"portNumber\":[\"3000\"],\"localPortNumber\":[\"3000\"]}'"
    : null
  )
}
