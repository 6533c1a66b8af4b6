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

output "connect" {
  description = "Shell on a VM through SSM Session Manager (needs the AWS CLI and its session-manager-plugin); no SSH or open port involved."
  value = (
    local.single
    ? "aws ssm start-session --region ${var.region} --target ${aws_instance.web[0].id}"
    : "aws ssm start-session --region ${var.region} --target $(aws autoscaling describe-auto-scaling-groups --region ${var.region} --auto-scaling-group-names ${aws_autoscaling_group.web[0].name} --query 'AutoScalingGroups[0].Instances[0].InstanceId' --output text)"
  )
}
