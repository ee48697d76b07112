using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading.Tasks;

using System.Net;

class ClientProgram
{
    static void Main(string[] args)
    {
        Console.WriteLine("CLIENT RUNNING..\n");

        // [test change] Host, port, greeting interval and run time from the
        // command line instead of Dns.GetHostName(), 12345 and 1000 ms, and a
        // bounded wait instead of `while (true) ;`.
        // Usage: ClientProgram HOST PORT [INTERVAL_MS] [SECONDS]
        string host = args[0];
        int port = int.Parse(args[1]);
        if (args.Length > 2)
            ServerSession.IntervalMs = int.Parse(args[2]);
        int seconds = args.Length > 3 ? int.Parse(args[3]) : 30;

        IPInformation ipInfo = new IPInformation(host, port);
        Connector connector = new Connector();

        connector.Connect(ipInfo.EndPoint, () => new ServerSession());

        for (int i = 0; i < seconds * 10; i++)
            System.Threading.Thread.Sleep(100);
        Environment.Exit(0);
    }
}
