# `terraform apply` end to end against the mocked AWS provider (kept apart from the plan-time files,
# whose override_during = plan would change what the mocks return here): both modes apply cleanly,
# and the outputs a user reads afterwards point at what was created.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  repo_url = "https://git.example.com/team/modelstack.git"
}

run "single_vm_outputs" {
  variables {
    domain = "models.example.com"
    email  = "ops@example.com"
  }

  assert {
    condition = alltrue([
      output.url == "https://models.example.com",
      output.elastic_ip == aws_eip.web[0].public_ip,
      output.instance_id == aws_instance.web[0].id,
      output.connect == "aws ssm start-session --region us-east-1 --target ${aws_instance.web[0].id}",
      output.autoscaling_group_name == null && output.alb_dns_name == null,
    ])
    error_message = "After apply the outputs must name the VM, its address and the SSM command."
  }
  assert {
    condition = (
      aws_eip.web[0].network_interface == aws_network_interface.web[0].id
      && one(aws_instance.web[0].network_interface).network_interface_id == aws_network_interface.web[0].id
    )
    error_message = "The Elastic IP must be on the VM's network interface."
  }
}

run "scaled_outputs" {
  variables {
    mode = "scaled"
  }

  assert {
    condition = alltrue([
      output.url == "http://${aws_lb.web[0].dns_name}",
      output.alb_dns_name == aws_lb.web[0].dns_name,
      output.autoscaling_group_name == aws_autoscaling_group.web[0].name,
      output.instance_id == null && output.elastic_ip == null,
    ])
    error_message = "After apply the outputs must name the load balancer and the group."
  }
  assert {
    condition     = aws_autoscaling_group.web[0].launch_template[0].version == tostring(aws_launch_template.web[0].latest_version)
    error_message = "The group must launch the newest launch template version."
  }
}
